//! Pods for weft's end-to-end tests and benchmark: each pod is a network
//! namespace with its own IP on a bridge, the iptables rules of
//! `weft proxy-init`, an application, and a real `weft-proxy` process.
//!
//! Every test gets its own namespaces and subnet; everything is torn down
//! in `Drop`, also when the test fails. Without root there are no
//! namespaces: [`Net::for_test`] says so on the test's output and returns
//! `None`, so the test reports that it did not run instead of passing
//! silently.

pub mod apps;
mod capture;
pub mod mesh_ca;
mod netns;
mod proxy;

pub use capture::Capture;
pub use mesh_ca::TestCa;
pub use netns::{Net, Pod};
pub use proxy::{LocalProxy, ProxyProcess, http_get, wait_for};

/// The group weft-proxy runs as in test pods; proxy-init's rules let its
/// own connections through (Linkerd's proxy UID, used as a GID so the proxy
/// keeps root's file access).
pub const PROXY_GID: u32 = 2102;
