//! rustls configuration for weft's mutual TLS: TLS 1.3 only, certificates
//! verified by webpki against the mesh's trust anchors, and a workload's
//! current certificate swapped in place as it renews (every new handshake
//! sees the new one; connections already open keep theirs).
//!
//! The crypto provider is chosen in one place, [`provider`]: ring today,
//! because the rest of weft's build (kube's client) already uses it. A FIPS
//! build swaps this function for aws-lc-rs's FIPS provider and rcgen's
//! `aws_lc_rs` feature; nothing else names a provider.

use crate::ca::{Leaf, server_name, unix_time};
use rcgen::KeyPair;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SignatureScheme,
    client::{ResolvesClientCert, WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::{CertifiedKey, SigningKey},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

/// The one crypto provider weft uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A workload's private key: ECDSA P-256, made in this process and never
/// written anywhere.
pub struct LocalKey {
    pair: KeyPair,
    signing: Arc<dyn SigningKey>,
}

impl LocalKey {
    pub fn generate() -> Self {
        let pair = KeyPair::generate().expect("ECDSA P-256 key generation works");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der()));
        let signing = provider().key_provider.load_private_key(der).expect("rustls loads an rcgen key");
        Self { pair, signing }
    }

    /// A CSR (DER) for `name`.
    pub fn csr(&self, name: &str) -> Result<Vec<u8>, String> {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        let csr = params.serialize_request(&self.pair).map_err(|e| e.to_string())?;
        Ok(csr.der().to_vec())
    }

    pub fn public_key(&self) -> &KeyPair {
        &self.pair
    }
}

/// A workload's identity for TLS: its name, the anchors it trusts, and its
/// current certificate (none until the CA has signed one).
pub struct Credentials {
    name: String,
    roots: Arc<RootCertStore>,
    signing: Arc<dyn SigningKey>,
    current: RwLock<Option<Current>>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(name: String, roots: Arc<RootCertStore>, key: &LocalKey) -> Self {
        Self { name, roots, signing: key.signing.clone(), current: RwLock::new(None) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Makes `leaf` the certificate presented from the next handshake on,
    /// once it is verified to name this workload and chain to the anchors.
    pub fn install(&self, leaf: &Leaf, now: SystemTime) -> Result<(), String> {
        verify_server(&self.roots, leaf, &self.name, now)?;
        let mut chain = vec![leaf.cert.clone()];
        chain.extend(leaf.chain.iter().cloned());
        let key = Arc::new(CertifiedKey::new(chain, self.signing.clone()));
        key.keys_match().map_err(|e| format!("the certificate is not for this proxy's key: {e}"))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Current { key, not_after: leaf.not_after });
        Ok(())
    }

    /// When the current certificate expires, if there is one.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current().map(|c| c.not_after)
    }

    fn current(&self) -> Option<Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.key)
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.key)
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// The server side of mesh TLS: presents `creds`' certificate; a client
/// certificate is verified when offered, and its absence is left for the
/// caller to judge (ports that require identity refuse it).
pub fn server_config(creds: Arc<Credentials>) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(creds.roots(), provider())
        .allow_unauthenticated()
        .build()
        .expect("the trust anchors make a verifier");
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(creds);
    Arc::new(config)
}

/// The client side: verifies the server against `roots` (the name is
/// given per connection), and presents `creds`' certificate when there is
/// one.
pub fn client_config(roots: Arc<RootCertStore>, creds: Option<Arc<Credentials>>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .with_root_certificates(roots);
    let config = match creds {
        Some(creds) => builder.with_client_cert_resolver(creds),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// The mesh identity a verified peer certificate proves: its DNS name.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs?.first()?).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    })
}

/// Whether a verified peer certificate names `identity` among its DNS names.
pub fn peer_has_identity(certs: Option<&[CertificateDer<'_>]>, identity: &str) -> bool {
    let Some(cert) = certs.and_then(|c| c.first()) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else { return false };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == identity))
}

/// Checks, as a peer would, that `leaf` proves `name` under `roots`.
pub fn verify_server(
    roots: &Arc<RootCertStore>,
    leaf: &Leaf,
    name: &str,
    now: SystemTime,
) -> Result<(), String> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&leaf.cert, &leaf.chain, &server_name(name)?, &[], unix_time(now))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
