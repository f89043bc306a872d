//! The identity CA as a proxy meets it: Certify over gRPC with tokens good
//! and bad, the controller's own TLS, and a new issuer picked up live.

use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};
use weft_controller::identity::{Ca, CaConfig, LocalTokens, TokenReviews, TokenValidator};
use weft_identity::{Leaf, Names, TokenKey, TrustAnchors, ca, tls::LocalKey};
use weft_store::{Config, Index};

const WEB: &str = "web.shop.serviceaccount.identity.weft.cluster.local";

struct Fixture {
    dir: PathBuf,
    addr: std::net::SocketAddr,
    metrics: Arc<weft_controller::Metrics>,
    tokens: TokenKey,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start_with(name: &str, tokens: Option<Box<dyn TokenValidator>>) -> Fixture {
    let dir = temp_dir(name);
    ca::init(&dir, &Names::default(), SystemTime::now()).unwrap();
    let stored = std::fs::read_to_string(dir.join(ca::TOKEN_KEY)).unwrap();
    let metrics = weft_controller::Metrics::new();
    let config = CaConfig {
        dir: dir.clone(),
        names: Names::default(),
        lifetime: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(20),
    };
    let tokens = tokens.unwrap_or_else(|| Box::new(LocalTokens(TokenKey::from_stored(&stored).unwrap())));
    let ca = Ca::load(config, tokens, metrics.clone()).unwrap();
    tokio::spawn(ca.clone().watch(Duration::from_millis(100)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let index = Arc::new(std::sync::Mutex::new(Index::new(Config::default())));
    tokio::spawn(weft_controller::serve_grpc(listener, index, metrics.clone(), Some(ca)));
    Fixture { dir, addr, metrics, tokens: TokenKey::from_stored(&stored).unwrap() }
}

impl Fixture {
    async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        IdentityClient::new(channel)
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::read(&self.dir.join(ca::ANCHOR_CERT)).unwrap()
    }

    fn token(&self, ns: &str, sa: &str) -> Vec<u8> {
        self.tokens.issue(ns, sa, Duration::from_secs(600), SystemTime::now()).into_bytes()
    }

    fn metric(&self, result: &str) -> u64 {
        let index = Arc::new(std::sync::Mutex::new(Index::new(Config::default())));
        let text = self.metrics.encode(&index);
        let line = format!("weft_controller_identity_certify_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |v| v.parse().unwrap())
    }
}

async fn certify(
    client: &mut IdentityClient<tonic::transport::Channel>,
    identity: &str,
    token: Vec<u8>,
    key: &LocalKey,
) -> Result<Leaf, tonic::Status> {
    let rsp = client
        .certify(CertifyRequest {
            identity: identity.into(),
            token,
            certificate_signing_request: key.csr(identity).unwrap(),
        })
        .await?
        .into_inner();
    let valid_until = SystemTime::try_from(rsp.valid_until.unwrap()).unwrap();
    Ok(Leaf {
        cert: CertificateDer::from(rsp.leaf_certificate),
        chain: rsp.intermediate_certificates.into_iter().map(CertificateDer::from).collect(),
        not_after: valid_until,
    })
}

#[tokio::test]
async fn certify_signs_only_what_the_token_proves() {
    let fx = start_with("certify", None).await;
    let mut client = fx.client().await;
    let key = LocalKey::generate();

    let leaf = certify(&mut client, WEB, fx.token("shop", "web"), &key).await.unwrap();
    weft_identity::tls::verify_server(&fx.anchors().roots(), &leaf, WEB, SystemTime::now()).unwrap();
    let lifetime = leaf.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3600), "{lifetime:?}");

    // A good token for another workload.
    let err = certify(&mut client, WEB, fx.token("shop", "db"), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("db.shop"), "{}", err.message());
    // No token, an expired one, one signed with another key, garbage.
    let err = certify(&mut client, WEB, Vec::new(), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let expired =
        fx.tokens.issue("shop", "web", Duration::from_secs(1), SystemTime::now() - Duration::from_secs(60));
    let err = certify(&mut client, WEB, expired.into_bytes(), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    let (other, _) = TokenKey::generate();
    let forged = other.issue("shop", "web", Duration::from_secs(600), SystemTime::now());
    let err = certify(&mut client, WEB, forged.into_bytes(), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // A name outside the mesh's naming.
    let err = certify(&mut client, "web.example.com", fx.token("shop", "web"), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A CSR for another name than the request's.
    let err = client
        .certify(CertifyRequest {
            identity: WEB.into(),
            token: fx.token("shop", "web"),
            certificate_signing_request: key
                .csr("db.shop.serviceaccount.identity.weft.cluster.local")
                .unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    assert_eq!(fx.metric("ok"), 1);
    assert_eq!(fx.metric("permission_denied"), 1);
    assert_eq!(fx.metric("unauthenticated"), 3);
    assert_eq!(fx.metric("invalid_argument"), 2);
}

#[tokio::test]
async fn the_controller_speaks_mesh_tls_as_its_own_identity() {
    let fx = start_with("tls", None).await;
    let roots = fx.anchors().roots();
    let config = weft_identity::tls::client_config(roots, None);
    let connect = |name: &'static str| {
        let config = config.clone();
        let addr = fx.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
        }
    };
    let names = Names::default();
    let identity: &'static str = Box::leak(names.identity_service().into_boxed_str());
    let destination: &'static str = Box::leak(names.destination_service().into_boxed_str());
    connect(identity).await.expect("the controller proves its identity-service name");
    connect(destination).await.expect("and its destination-service name");
    assert!(connect(WEB).await.is_err(), "but no workload's name");
}

#[tokio::test]
async fn a_new_issuer_is_used_without_a_restart_and_a_bad_one_is_not() {
    let fx = start_with("rotate", None).await;
    let mut client = fx.client().await;
    let key = LocalKey::generate();
    let before = certify(&mut client, WEB, fx.token("shop", "web"), &key).await.unwrap();

    ca::rotate_issuer(&fx.dir, &Names::default(), SystemTime::now()).unwrap();
    let new_issuer = std::fs::read_to_string(fx.dir.join(ca::ISSUER_CERT)).unwrap();
    let new_issuer = CertificateDer::from_pem_slice(new_issuer.as_bytes()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let leaf = certify(&mut client, WEB, fx.token("shop", "web"), &key).await.unwrap();
        if leaf.chain[0] == new_issuer {
            break leaf;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new issuer was not used within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(before.chain[0], after.chain[0]);
    weft_identity::tls::verify_server(&fx.anchors().roots(), &after, WEB, SystemTime::now()).unwrap();

    // A key that does not match: refused, counted, and the last good issuer
    // keeps signing.
    std::fs::write(fx.dir.join(ca::ISSUER_KEY), std::fs::read(fx.dir.join(ca::ANCHOR_KEY)).unwrap()).unwrap();
    let index = Arc::new(std::sync::Mutex::new(Index::new(Config::default())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fx.metrics.encode(&index).contains("weft_controller_identity_issuer_reload_errors_total 1") {
        assert!(tokio::time::Instant::now() < deadline, "the bad issuer was not noticed within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaf = certify(&mut client, WEB, fx.token("shop", "web"), &key).await.unwrap();
    assert_eq!(leaf.chain[0], new_issuer);
}

#[tokio::test]
async fn kubernetes_tokens_are_checked_with_a_token_review() {
    use http_body_util::BodyExt;
    // The Kubernetes API server, faked: it accepts the token "good" as
    // shop/web for identity.l5d.io and nothing else.
    let api = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        assert_eq!(req.uri().path(), "/apis/authentication.k8s.io/v1/tokenreviews");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["spec"]["audiences"][0], "identity.l5d.io");
        let status = if review["spec"]["token"] == "good" {
            serde_json::json!({"authenticated": true, "audiences": ["identity.l5d.io"],
                "user": {"username": "system:serviceaccount:shop:web"}})
        } else {
            serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
        };
        let rsp = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {}, "spec": review["spec"], "status": status});
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::to_vec(&rsp).unwrap(),
        ))))
    });
    let client = kube::Client::new(api, "default");
    let fx = start_with("kube", Some(Box::new(TokenReviews(client)))).await;
    let mut identity = fx.client().await;
    let key = LocalKey::generate();
    certify(&mut identity, WEB, b"good".to_vec(), &key).await.unwrap();
    let db = "db.shop.serviceaccount.identity.weft.cluster.local";
    let err = certify(&mut identity, db, b"good".to_vec(), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = certify(&mut identity, WEB, b"bad".to_vec(), &key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("invalid bearer token"), "{}", err.message());
}
