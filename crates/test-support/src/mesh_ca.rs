//! A mesh CA for tests and the benchmark: `weft identity init` in a
//! temporary directory, a controller serving it (with a store directory),
//! the environment a proxy needs to be certified by it, and client
//! certificates for peers that are not proxies.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use weft_controller::identity::{Ca, CaConfig, LocalTokens};
use weft_identity::{Issuer, Names, TokenKey, TrustAnchors, ca};

/// A controller `TestCa::serve` started.
pub struct Controller {
    metrics: Arc<weft_controller::Metrics>,
    index: weft_store::SharedIndex,
}

impl Controller {
    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        self.metrics.encode(&self.index)
    }
}

pub struct TestCa {
    pub dir: PathBuf,
    pub names: Names,
    pub anchors_pem: String,
    tokens: TokenKey,
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestCa {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-ca-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = Names::default();
        ca::init(&dir, &names, SystemTime::now()).expect("weft identity init");
        let anchors_pem = std::fs::read_to_string(dir.join(ca::ANCHOR_CERT)).unwrap();
        let tokens =
            TokenKey::from_stored(&std::fs::read_to_string(dir.join(ca::TOKEN_KEY)).unwrap()).unwrap();
        Self { dir, names, anchors_pem, tokens }
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(&self.anchors_pem).unwrap()
    }

    pub fn issuer(&self) -> Issuer {
        Issuer::read(&self.dir, &self.anchors(), SystemTime::now()).unwrap()
    }

    pub fn identity(&self, ns: &str, sa: &str) -> String {
        self.names.workload(ns, sa)
    }

    /// A store directory inside the CA's, for the controller to watch.
    pub fn store(&self) -> PathBuf {
        let store = self.dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        store
    }

    /// Serves the controller (discovery from `store()`, and the CA, signing
    /// certificates valid for `lifetime`) on `listener`, in the current
    /// runtime.
    pub fn serve(&self, listener: tokio::net::TcpListener, lifetime: Duration) -> Controller {
        let index = Arc::new(Mutex::new(weft_store::Index::new(weft_store::Config::default())));
        weft_store::DirSource::new(self.store()).watch(index.clone()).unwrap();
        let metrics = weft_controller::Metrics::new();
        let config = CaConfig {
            dir: self.dir.clone(),
            names: self.names.clone(),
            lifetime,
            clock_skew: Duration::from_secs(20),
        };
        let ca = Ca::load(config, Box::new(LocalTokens(self.tokens.clone())), metrics.clone()).unwrap();
        tokio::spawn(weft_controller::serve_grpc(listener, index.clone(), metrics.clone(), Some(ca)));
        Controller { metrics, index }
    }

    /// A token file for `ns/sa`.
    pub fn token_file(&self, ns: &str, sa: &str) -> PathBuf {
        let path = self.dir.join(format!("{ns}-{sa}.token"));
        let token = self.tokens.issue(ns, sa, Duration::from_secs(3600), SystemTime::now());
        std::fs::write(&path, token).unwrap();
        path
    }

    /// The environment of a proxy running as `ns/sa` whose controller
    /// (identity, destination, policy) is at `controller`.
    pub fn proxy_env(&self, ns: &str, sa: &str, controller: SocketAddr) -> Vec<(String, String)> {
        let token = self.token_file(ns, sa);
        vec![
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME".into(), self.identity(ns, sa)),
            ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS".into(), self.anchors_pem.clone()),
            ("LINKERD2_PROXY_IDENTITY_TOKEN_FILE".into(), path(&token)),
            ("LINKERD2_PROXY_IDENTITY_SVC_ADDR".into(), controller.to_string()),
            ("LINKERD2_PROXY_IDENTITY_SVC_NAME".into(), self.names.identity_service()),
            ("LINKERD2_PROXY_DESTINATION_SVC_NAME".into(), self.names.destination_service()),
        ]
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `[(String, String)]` as the `[(&str, &str)]` proxies take.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A meshed pod (it has a proxy of this mesh) for the store.
pub fn meshed_pod(name: &str, ns: &str, app: &str, sa: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: {ns}, labels: {{ app: {app}, linkerd.io/control-plane-ns: weft }} }}\nspec: {{ serviceAccountName: {sa} }}\nstatus: {{ podIP: {ip} }}\n"
    )
}

impl TestCa {
    /// A TLS client presenting a certificate `issuer` signed for `name`,
    /// valid from `from` for `lifetime` (an expired one, if the test
    /// wants), trusting this mesh's anchors.
    pub fn client_config(
        &self,
        issuer: &Issuer,
        name: &str,
        from: SystemTime,
        lifetime: Duration,
    ) -> Arc<rustls::ClientConfig> {
        let key = weft_identity::tls::LocalKey::generate();
        let leaf = issuer.issue(&[name], key.public_key(), lifetime, Duration::ZERO, from).unwrap();
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
            std::iter::once(leaf.cert).chain(leaf.chain).collect();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
            key.public_key().serialize_der(),
        ));
        let config = rustls::ClientConfig::builder_with_provider(weft_identity::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.anchors().roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}
