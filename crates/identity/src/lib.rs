//! weft's identity: workload names, the certificate authority that signs
//! them (trust anchors, an issuer, CSR signing), the tokens with which a
//! workload proves who it is in local mode, and the rustls configuration
//! that weft-proxy and the controller share for mutual TLS.
//!
//! All cryptography is rcgen (certificates, CSRs), x509-parser (reading
//! certificates), rustls/webpki (verification) and ring (HMAC); nothing here
//! parses or writes ASN.1 by hand.

pub mod ca;
pub mod name;
pub mod tls;
pub mod token;

pub use ca::{CaError, Issuer, Leaf, TrustAnchors};
pub use name::Names;
pub use tls::Credentials;
pub use token::{Claims, TokenError, TokenKey};

/// The audience a workload's token is bound to (Linkerd's).
pub const TOKEN_AUDIENCE: &str = "identity.l5d.io";
