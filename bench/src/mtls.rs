//! The mesh-TLS path: a controller with the identity CA in a pod of its
//! own, a service in front of the server pod (so that the client's proxy
//! discovers the endpoint and its identity), and weft-proxy sidecars that
//! are certified before the load starts.

use crate::{Path, path};
use std::{
    net::SocketAddr,
    path::Path as FsPath,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};
use weft_test_support::{
    Net, Pod, TestCa,
    mesh_ca::{env_refs, meshed_pod},
};

pub struct Control {
    ca: TestCa,
    addr: SocketAddr,
    _pod: Pod,
    _runtime: tokio::runtime::Runtime,
}

/// The cluster IPs of the services in front of the mTLS paths' servers.
const SERVICE_HOST: u8 = 220;

impl Control {
    pub fn start(net: &Net) -> Control {
        let ca = TestCa::new("weft-bench");
        let pod = net.pod("control");
        let addr = SocketAddr::from((pod.ip(), 8086));
        let runtime = pod.new_runtime();
        let bind = runtime.spawn(async move { tokio::net::TcpListener::bind(addr).await });
        let listener = runtime.block_on(bind).expect("the bind task").expect("binding the controller");
        runtime.block_on(async { ca.serve(listener, Duration::from_secs(24 * 3600)) });
        Control { ca, addr, _pod: pod, _runtime: runtime }
    }

    /// A client/server pair with mesh TLS between their proxies; the
    /// client sends to the service, whose one endpoint is the server. With
    /// `authz`, the server's port has a Server and three authorization
    /// policies, the last of which admits the client (the cost of policy
    /// on allowed requests); without, the proxy's default policy (one
    /// authorization that admits everyone) applies.
    pub fn path(&self, net: &Net, proxy_bin: &FsPath, name: &'static str, authz: bool) -> Path {
        // Each path its own service (and app label), in the same store.
        let index: u8 = match name {
            "weft-mtls" => 0,
            "weft-authz" => 1,
            _ => 2,
        };
        let host = SERVICE_HOST + index;
        let app = ["mtls", "authz", "other"][usize::from(index)];
        let service = net.address(host);
        let proxy = |pod: &Pod, sa: &str| {
            let mut env = self.ca.proxy_env("bench", sa, self.addr);
            env.push(("LINKERD2_PROXY_LOG".into(), "warn".into()));
            let workload = match sa {
                "client" => Some("bench:client".to_string()),
                _ if authz => Some(format!("bench:{app}-server")),
                _ => None,
            };
            if let Some(workload) = workload {
                env.push(("LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(), self.addr.to_string()));
                env.push(("LINKERD2_PROXY_POLICY_WORKLOAD".into(), workload));
            }
            pod.start_proxy(proxy_bin, &env_refs(&env))
        };
        let mut path = path(net, name, |_, _| None);
        let mut store = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {app}, namespace: bench }}\nspec:\n  clusterIP: {service}\n  selector: {{ app: {app} }}\n  ports: [{{ name: http, port: 80, targetPort: 8080 }}, {{ name: grpc, port: 50051, targetPort: 50051 }}]\n---\n{}",
            meshed_pod(&format!("{app}-server"), "bench", app, "server", &path.server.ip().to_string())
        );
        if authz {
            store += &policies(app);
        }
        std::fs::write(self.ca.store().join(format!("{app}.yaml")), store).expect("writing the bench store");
        path.proxies = Some((proxy(&path.client, "client"), proxy(&path.server, "server")));
        path.http = (service, 80).into();
        path.grpc = (service, 50051).into();
        path
    }

    /// Full mesh-TLS handshakes (no resumption) with the server's sidecar
    /// from 4 concurrent clients in the client pod for `duration`: the rate,
    /// and the rate per second of the sidecar's CPU time.
    pub fn handshakes(&self, path: &Path, duration: Duration) -> anyhow::Result<(f64, f64)> {
        let (_, server_proxy) = path.proxies.as_ref().expect("the mTLS path has sidecars");
        let mut config = (*self.ca.client_config(
            &self.ca.issuer(),
            &self.ca.identity("bench", "load"),
            SystemTime::now(),
            Duration::from_secs(3600),
        ))
        .clone();
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        let server_name = self.ca.identity("bench", "server");
        let target = SocketAddr::from((path.server.ip(), 8080));
        let cpu_before = server_proxy.cpu_time();
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = std::time::Instant::now();
        let (d, e) = (done.clone(), errors.clone());
        path.client.block_on(async move {
            let deadline = tokio::time::Instant::now() + duration;
            let clients = (0..4).map(|_| {
                let (config, name, done, errors) =
                    (config.clone(), server_name.clone(), d.clone(), e.clone());
                tokio::spawn(async move {
                    let name = rustls_pki_types::ServerName::try_from(name).expect("a DNS name");
                    while tokio::time::Instant::now() < deadline {
                        let connector = tokio_rustls::TlsConnector::from(config.clone());
                        let result = async {
                            let tcp = tokio::net::TcpStream::connect(target).await?;
                            connector.connect(name.clone(), tcp).await
                        };
                        match result.await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            });
            for client in clients.collect::<Vec<_>>() {
                let _ = client.await;
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server_proxy.cpu_time().saturating_sub(cpu_before).as_secs_f64();
        let n = done.load(Ordering::Relaxed) as f64;
        if errors.load(Ordering::Relaxed) > 0 {
            println!("{} handshakes failed", errors.load(Ordering::Relaxed));
        }
        anyhow::ensure!(n > 0.0, "no mesh-TLS handshake with the server's sidecar succeeded");
        Ok((n / elapsed, n / cpu.max(1e-9)))
    }
}

/// A Server on each of the app's ports with three authorization policies:
/// a network the client is not in, an identity it does not have, and its
/// own service account.
fn policies(app: &str) -> String {
    let mut yaml = String::from(
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: { name: elsewhere, namespace: bench }\nspec: { networks: [{ cidr: 192.0.2.0/24 }] }\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: { name: ops, namespace: bench }\nspec: { identities: [\"*.ops.serviceaccount.identity.weft.cluster.local\"] }\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: { name: client, namespace: bench }\nspec: { identityRefs: [{ kind: ServiceAccount, name: client }] }\n",
    );
    for (server, port) in [("http", 8080), ("grpc", 50051)] {
        yaml += &format!(
            "---\napiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{ name: {app}-{server}, namespace: bench }}\nspec:\n  podSelector: {{ matchLabels: {{ app: {app} }} }}\n  port: {port}\n"
        );
        for (policy, kind, authn) in [
            ("a-elsewhere", "NetworkAuthentication", "elsewhere"),
            ("b-ops", "MeshTLSAuthentication", "ops"),
            ("c-client", "MeshTLSAuthentication", "client"),
        ] {
            yaml += &format!(
                "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: {app}-{server}-{policy}, namespace: bench }}\nspec:\n  targetRef: {{ group: policy.linkerd.io, kind: Server, name: {app}-{server} }}\n  requiredAuthenticationRefs: [{{ group: policy.linkerd.io, kind: {kind}, name: {authn} }}]\n"
            );
        }
    }
    yaml
}

impl Control {
    /// Certificate files for a sidecar (Envoy, HAProxy) named `name` in the
    /// bench namespace, from the same CA as the weft pair's.
    pub fn tls_files(&self, name: &str) -> anyhow::Result<crate::envoy::TlsFiles> {
        let identity = self.ca.identity("bench", name);
        let key = weft_identity::tls::LocalKey::generate();
        let leaf = self.ca.issuer().issue(
            &[identity.as_str()],
            key.public_key(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(60),
            SystemTime::now(),
        )?;
        let dir = self.ca.dir.join("envoy");
        std::fs::create_dir_all(&dir)?;
        let chain: String =
            std::iter::once(&leaf.cert).chain(&leaf.chain).map(|c| pem("CERTIFICATE", c)).collect();
        let files = crate::envoy::TlsFiles {
            chain: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            anchors: dir.join("anchors.crt"),
            combined: dir.join(format!("{name}.pem")),
        };
        let key_pem = key.public_key().serialize_pem();
        std::fs::write(&files.combined, format!("{chain}{key_pem}"))?;
        std::fs::write(&files.chain, chain)?;
        std::fs::write(&files.key, key_pem)?;
        std::fs::write(&files.anchors, &self.ca.anchors_pem)?;
        Ok(files)
    }

    pub fn identity(&self, name: &str) -> String {
        self.ca.identity("bench", name)
    }
}

/// DER as PEM (the files Envoy reads).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
