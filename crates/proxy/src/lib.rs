//! weft-proxy: the data plane of the weft service mesh.
//!
//! One proxy runs beside each workload. Connections redirected to it by
//! iptables (see `weft proxy-init`) are classified by their first bytes and
//! proxied: HTTP per request, everything else as opaque TCP, all of it
//! counted under linkerd2-proxy's metric names.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod http;
pub mod identity;
pub mod io;
pub mod matching;
pub mod metrics;
pub mod policy;
pub mod tap;
pub mod tcp;
pub mod traffic;

pub use app::Proxy;
pub use config::Config;
