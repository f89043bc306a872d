//! The identity CA: trust anchors (a PEM bundle), an issuer certificate
//! chained to one of them, and the signing of workloads' CSRs.
//!
//! An issuer is validated when it is loaded, so that a controller never
//! serves certificates that proxies would refuse: it must be a CA, be valid
//! now, match its key, and chain to the anchors (checked by having webpki,
//! the verifier the proxies use, accept a leaf signed by it).

use crate::{Names, tls};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName, UnixTime, pem::PemObject};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use time::OffsetDateTime;

/// What `weft identity init` writes.
pub const ANCHOR_CERT: &str = "ca.crt";
pub const ANCHOR_KEY: &str = "ca.key";
pub const ISSUER_CERT: &str = "issuer.crt";
pub const ISSUER_KEY: &str = "issuer.key";
pub const TOKEN_KEY: &str = "token.key";

const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{dir} already holds an identity ({file}); remove it or choose another directory")]
    Exists { dir: PathBuf, file: &'static str },
    #[error("the trust anchors hold no PEM certificate")]
    NoAnchors,
    #[error("a trust anchor is not a valid certificate: {0}")]
    BadAnchor(String),
    #[error("the issuer certificate is not valid PEM/X.509: {0}")]
    BadIssuerCert(String),
    #[error("the issuer key is not a valid PEM private key: {0}")]
    BadIssuerKey(String),
    #[error("the issuer certificate is not a CA (its basic constraints do not allow signing)")]
    NotCa,
    #[error("the issuer certificate expired at {not_after} (unix time); make a new issuer")]
    IssuerExpired { not_after: i64 },
    #[error("the issuer certificate is not valid before {not_before} (unix time); check the clock")]
    IssuerNotYetValid { not_before: i64 },
    #[error("the issuer key does not match the issuer certificate's public key")]
    KeyMismatch,
    #[error("the issuer does not chain to the trust anchors: {0}")]
    NotChained(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the certificate signing request is malformed or its signature is invalid: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked:?}; it must name exactly the identity {identity}")]
    WrongNames { asked: Vec<String>, identity: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The trust anchors: every certificate of a PEM bundle.
#[derive(Clone)]
pub struct TrustAnchors {
    certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

/// A certificate signed for a workload, with the chain to present with it.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    /// The intermediates between the leaf and an anchor (the issuer).
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// An issuer certificate and its key, validated against the anchors.
pub struct Issuer {
    cert: CertificateDer<'static>,
    signer: rcgen::Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

// === impl TrustAnchors ===

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustAnchors({} certificates)", self.certs.len())
    }
}

impl TrustAnchors {
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::BadAnchor(e.to_string()))?;
        if certs.is_empty() {
            return Err(CaError::NoAnchors);
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| CaError::BadAnchor(e.to_string()))?;
        }
        Ok(Self { certs, roots: Arc::new(roots) })
    }

    pub fn read(path: &Path) -> Result<Self, CaError> {
        Self::from_pem(&read(path)?)
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

// === impl Issuer ===

impl Issuer {
    /// Reads `issuer.crt` and `issuer.key` from `dir` and validates them.
    pub fn read(dir: &Path, anchors: &TrustAnchors, now: SystemTime) -> Result<Self, CaError> {
        Self::from_pem(&read(&dir.join(ISSUER_CERT))?, &read(&dir.join(ISSUER_KEY))?, anchors, now)
    }

    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        anchors: &TrustAnchors,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::BadIssuerCert(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadIssuerKey(e.to_string()))?;

        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert).map_err(|e| CaError::BadIssuerCert(e.to_string()))?;
        if !x509.is_ca() {
            return Err(CaError::NotCa);
        }
        let unix = unix_secs(now);
        let validity = x509.validity();
        if validity.not_after.timestamp() <= unix {
            return Err(CaError::IssuerExpired { not_after: validity.not_after.timestamp() });
        }
        if validity.not_before.timestamp() > unix {
            return Err(CaError::IssuerNotYetValid { not_before: validity.not_before.timestamp() });
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let not_after = UNIX_EPOCH + Duration::from_secs(validity.not_after.timestamp().max(0) as u64);

        let signer = rcgen::Issuer::from_ca_cert_der(&cert, key)?;
        let issuer = Self { cert: cert.clone(), signer, not_after };

        // The proof that proxies will accept what this issuer signs: webpki
        // verifies a throwaway leaf against the anchors.
        let probe_name = "probe.weft.serviceaccount.identity.weft.invalid";
        let probe_key = KeyPair::generate()?;
        let probe = issuer.issue(&[probe_name], &probe_key, Duration::from_secs(60), Duration::ZERO, now)?;
        tls::verify_server(&anchors.roots(), &probe, probe_name, now)
            .map_err(|e| CaError::NotChained(e.to_string()))?;
        Ok(issuer)
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Signs a workload's CSR for `identity` alone: whatever else the CSR
    /// asks for (other names, CA rights, lifetimes) is not granted, and a
    /// CSR that asks for another name is refused.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        identity: &str,
        lifetime: Duration,
        skew: Duration,
        now: SystemTime,
    ) -> Result<Leaf, SignError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::DnsName(n) => n.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked.len() != 1 || asked[0] != identity {
            return Err(SignError::WrongNames { asked, identity: identity.into() });
        }
        self.issue(&[identity], &csr.public_key, lifetime, skew, now)
            .map_err(|e| SignError::Sign(e.to_string()))
    }

    /// Issues a leaf for `names` to `public_key`: valid from `skew` before
    /// `now` (clocks differ) for `lifetime`, and never past the issuer.
    pub fn issue(
        &self,
        names: &[&str],
        public_key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
        skew: Duration,
        now: SystemTime,
    ) -> Result<Leaf, rcgen::Error> {
        let not_after = (now + lifetime).min(self.not_after);
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *name);
        }
        params.not_before = OffsetDateTime::from(now - skew);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.signer)?;
        Ok(Leaf { cert: cert.der().clone(), chain: vec![self.cert.clone()], not_after })
    }
}

/// What `init` made, for the command to report.
#[derive(Debug)]
pub struct Initialized {
    pub anchor_not_after: SystemTime,
    pub issuer_not_after: SystemTime,
}

/// Creates a new trust anchor (10 years), an issuer signed by it (1 year)
/// and a token-signing key in `dir`. Refuses to overwrite an identity that
/// is already there: its anchor is what every proxy trusts.
pub fn init(dir: &Path, names: &Names, now: SystemTime) -> Result<Initialized, CaError> {
    for file in [ANCHOR_CERT, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY] {
        if dir.join(file).exists() {
            return Err(CaError::Exists { dir: dir.into(), file });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.into(), source })?;

    let anchor_key = KeyPair::generate()?;
    let anchor_params = ca_params(
        &format!("root.{}.{}", names.control_plane_ns, names.trust_domain),
        now,
        ANCHOR_LIFETIME,
        None,
    );
    let anchor = anchor_params.self_signed(&anchor_key)?;
    let anchor_key_pem = anchor_key.serialize_pem();
    let anchor_signer = rcgen::Issuer::new(anchor_params, anchor_key);

    let issuer_key = KeyPair::generate()?;
    let issuer_params = ca_params(
        &format!("identity.{}.{}", names.control_plane_ns, names.trust_domain),
        now,
        ISSUER_LIFETIME,
        Some(0),
    );
    let issuer = issuer_params.signed_by(&issuer_key, &anchor_signer)?;

    let (token_key, _) = crate::TokenKey::generate();
    write(&dir.join(ANCHOR_CERT), anchor.pem().as_bytes(), false)?;
    write(&dir.join(ANCHOR_KEY), anchor_key_pem.as_bytes(), true)?;
    write(&dir.join(ISSUER_CERT), issuer.pem().as_bytes(), false)?;
    write(&dir.join(ISSUER_KEY), issuer_key.serialize_pem().as_bytes(), true)?;
    write(&dir.join(TOKEN_KEY), token_key.as_bytes(), true)?;
    Ok(Initialized { anchor_not_after: now + ANCHOR_LIFETIME, issuer_not_after: now + ISSUER_LIFETIME })
}

/// Makes a new issuer (1 year) from the trust anchor in `dir` and puts it
/// in place of the current one (`issuer.crt`, `issuer.key`), each file
/// replaced whole so a watching controller never reads half of one.
pub fn rotate_issuer(dir: &Path, names: &Names, now: SystemTime) -> Result<SystemTime, CaError> {
    let anchor_pem = read(&dir.join(ANCHOR_CERT))?;
    let anchor_key = KeyPair::from_pem(&read(&dir.join(ANCHOR_KEY))?)
        .map_err(|e| CaError::BadIssuerKey(format!("{ANCHOR_KEY}: {e}")))?;
    // The anchor bundle's first certificate is the one whose key is here.
    let anchor = CertificateDer::from_pem_slice(anchor_pem.as_bytes())
        .map_err(|e| CaError::BadAnchor(e.to_string()))?;
    let signer = rcgen::Issuer::from_ca_cert_der(&anchor, anchor_key)?;
    let key = KeyPair::generate()?;
    let params = ca_params(
        &format!("identity.{}.{}", names.control_plane_ns, names.trust_domain),
        now,
        ISSUER_LIFETIME,
        Some(0),
    );
    let cert = params.signed_by(&key, &signer)?;
    // Validate before replacing anything.
    let anchors = TrustAnchors::from_pem(&anchor_pem)?;
    Issuer::from_pem(&cert.pem(), &key.serialize_pem(), &anchors, now)?;
    replace(&dir.join(ISSUER_KEY), key.serialize_pem().as_bytes(), true)?;
    replace(&dir.join(ISSUER_CERT), cert.pem().as_bytes(), false)?;
    Ok(now + ISSUER_LIFETIME)
}

fn replace(path: &Path, contents: &[u8], secret: bool) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write(&tmp, contents, secret)?;
    std::fs::rename(&tmp, path).map_err(|source| CaError::Write { path: path.into(), source })
}

fn ca_params(cn: &str, now: SystemTime, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from(now + lifetime);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    bytes[0] &= 0x7f; // a positive integer
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub(crate) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?} is not a DNS name: {e}"))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read { path: path.into(), source })
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), CaError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let err = |source| CaError::Write { path: path.into(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("weft-ca-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load(dir: &Path) -> (TrustAnchors, Issuer) {
        let anchors = TrustAnchors::read(&dir.join(ANCHOR_CERT)).unwrap();
        let issuer = Issuer::read(dir, &anchors, SystemTime::now()).unwrap();
        (anchors, issuer)
    }

    #[test]
    fn init_makes_a_working_ca_and_refuses_to_overwrite_it() {
        let tmp = TempDir::new("init");
        init(&tmp.0, &Names::default(), SystemTime::now()).unwrap();
        let (anchors, issuer) = load(&tmp.0);
        let mode = |f: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tmp.0.join(f)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(ISSUER_KEY), 0o600);
        assert_eq!(mode(ANCHOR_KEY), 0o600);
        assert_eq!(mode(TOKEN_KEY), 0o600);
        let year = issuer.not_after().duration_since(SystemTime::now()).unwrap();
        assert!(year > Duration::from_secs(364 * 24 * 3600), "{year:?}");

        let name = "web.shop.serviceaccount.identity.weft.cluster.local";
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec![name.into()]).unwrap().serialize_request(&key).unwrap();
        let now = SystemTime::now();
        let leaf = issuer
            .sign_csr(csr.der(), name, Duration::from_secs(24 * 3600), Duration::from_secs(20), now)
            .unwrap();
        tls::verify_server(&anchors.roots(), &leaf, name, now).unwrap();
        // Another name is not what the certificate proves.
        assert!(
            tls::verify_server(
                &anchors.roots(),
                &leaf,
                "db.shop.serviceaccount.identity.weft.cluster.local",
                now
            )
            .is_err()
        );
        // 24 hours from now, not a second more; the clock-skew allowance
        // is before now.
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert).unwrap();
        assert_eq!(x509.validity().not_after.timestamp(), unix_secs(now + Duration::from_secs(24 * 3600)));
        assert_eq!(x509.validity().not_before.timestamp(), unix_secs(now) - 20);
        assert!(!x509.is_ca());

        let again = init(&tmp.0, &Names::default(), SystemTime::now()).unwrap_err();
        assert!(again.to_string().contains("already holds an identity"), "{again}");
    }

    #[test]
    fn csrs_for_other_names_or_forged_are_refused() {
        let tmp = TempDir::new("csr");
        init(&tmp.0, &Names::default(), SystemTime::now()).unwrap();
        let (_, issuer) = load(&tmp.0);
        let me = "web.shop.serviceaccount.identity.weft.cluster.local";
        let key = KeyPair::generate().unwrap();
        let day = Duration::from_secs(24 * 3600);
        let csr = |names: Vec<String>| {
            CertificateParams::new(names).unwrap().serialize_request(&key).unwrap().der().to_vec()
        };
        let other = csr(vec!["db.shop.serviceaccount.identity.weft.cluster.local".into()]);
        let err = issuer.sign_csr(&other, me, day, Duration::ZERO, SystemTime::now()).unwrap_err();
        assert!(matches!(err, SignError::WrongNames { .. }), "{err}");
        let two = csr(vec![me.into(), "evil.example.com".into()]);
        assert!(matches!(
            issuer.sign_csr(&two, me, day, Duration::ZERO, SystemTime::now()),
            Err(SignError::WrongNames { .. })
        ));
        let mut forged = csr(vec![me.into()]);
        let n = forged.len();
        forged[n - 3] ^= 0x55; // inside the signature
        assert!(matches!(
            issuer.sign_csr(&forged, me, day, Duration::ZERO, SystemTime::now()),
            Err(SignError::BadCsr(_))
        ));
        assert!(matches!(
            issuer.sign_csr(b"not a csr", me, day, Duration::ZERO, SystemTime::now()),
            Err(SignError::BadCsr(_))
        ));
    }

    #[test]
    fn a_rotated_issuer_chains_to_the_same_anchor() {
        let tmp = TempDir::new("rotate");
        init(&tmp.0, &Names::default(), SystemTime::now()).unwrap();
        let (_, before) = load(&tmp.0);
        rotate_issuer(&tmp.0, &Names::default(), SystemTime::now()).unwrap();
        let (_, after) = load(&tmp.0);
        assert_ne!(before.cert(), after.cert());
    }

    #[test]
    fn bad_issuers_are_refused_with_the_reason() {
        let a = TempDir::new("bad-a");
        let b = TempDir::new("bad-b");
        let now = SystemTime::now();
        init(&a.0, &Names::default(), now).unwrap();
        init(&b.0, &Names::default(), now).unwrap();
        let anchors_a = TrustAnchors::read(&a.0.join(ANCHOR_CERT)).unwrap();
        let file = |d: &TempDir, f: &str| std::fs::read_to_string(d.0.join(f)).unwrap();

        // B's issuer under A's anchors.
        let err =
            Issuer::from_pem(&file(&b, ISSUER_CERT), &file(&b, ISSUER_KEY), &anchors_a, now).err().unwrap();
        assert!(matches!(err, CaError::NotChained(_)), "{err}");
        // A's certificate with B's key.
        let err =
            Issuer::from_pem(&file(&a, ISSUER_CERT), &file(&b, ISSUER_KEY), &anchors_a, now).err().unwrap();
        assert!(matches!(err, CaError::KeyMismatch), "{err}");
        // Two years on, the issuer has expired.
        let later = now + Duration::from_secs(2 * 365 * 24 * 3600);
        let err =
            Issuer::from_pem(&file(&a, ISSUER_CERT), &file(&a, ISSUER_KEY), &anchors_a, later).err().unwrap();
        assert!(matches!(err, CaError::IssuerExpired { .. }), "{err}");
        assert!(err.to_string().contains("expired"));
        // Not PEM at all.
        let err = Issuer::from_pem("garbage", &file(&a, ISSUER_KEY), &anchors_a, now).err().unwrap();
        assert!(matches!(err, CaError::BadIssuerCert(_)), "{err}");
        assert!(matches!(TrustAnchors::from_pem("nothing here"), Err(CaError::NoAnchors)));
    }
}
