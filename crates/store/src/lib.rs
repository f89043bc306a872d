//! weft's store: one in-memory index of resources, with one model whatever
//! the source (a directory of YAML in local mode, Kubernetes watches in a
//! cluster). The index does no I/O; sources feed it, and the control
//! plane's servers read what it publishes on watch channels.

pub mod dir;
pub mod endpoints;
pub mod index;
pub mod kube;
pub mod policy;
pub mod resource;
pub mod traffic;

pub use dir::{DirSource, SharedIndex};
pub use endpoints::{Endpoint, EndpointSet, ServicePort, TlsId};
pub use index::{Config, Index};
pub use resource::{Key, Kind, ParseError, Resource};
