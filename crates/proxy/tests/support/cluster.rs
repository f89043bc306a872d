//! A client pod and server pods, each with weft-proxy, and the controller
//! (in the client pod) serving a store directory the test writes: services
//! are made of server pods, and routes and policies are YAML files.

use super::PROXY;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};
use weft_test_support::{Net, Pod, ProxyProcess, apps, apps::HttpStats};

pub const CONTROLLER: &str = "127.0.0.1:8086";

/// Fields drop in order: proxies and controller first, then pods, then
/// the network and the store directory.
pub struct Cluster {
    controller: Option<tokio::runtime::Runtime>,
    proxies: Vec<ProxyProcess>,
    pub client: Pod,
    pub servers: Vec<Pod>,
    pub store: Store,
    pub net: Net,
}

pub struct Store(pub PathBuf);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    /// Three server pods as the endpoints of `web.shop` (port 80 to 8080),
    /// running.
    pub fn start(test: &str) -> Option<Cluster> {
        let mut cluster = Cluster::new(test, 3)?;
        cluster.service("web", 200, "");
        for i in 0..3 {
            cluster.add_endpoint(i);
        }
        cluster.run();
        Some(cluster)
    }

    /// `servers` server pods and an empty store; nothing running yet.
    pub fn new(test: &str, servers: usize) -> Option<Cluster> {
        let net = Net::for_test(test)?;
        let client = net.pod("client");
        let servers: Vec<Pod> = (1..=servers).map(|i| net.pod(&format!("s{i}"))).collect();
        let store = Store(std::env::temp_dir().join(format!("weft-store-{test}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&store.0);
        std::fs::create_dir_all(&store.0).unwrap();
        Some(Cluster { controller: None, proxies: vec![], client, servers, store, net })
    }

    /// Writes Service `name` in `shop` at `.host` of the test's subnet,
    /// port 80 to 8080, selecting pods labelled `app: name`, with extra
    /// metadata lines (annotations).
    pub fn service(&self, name: &str, host: u8, annotations: &str) {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations: {{{annotations}}}\nspec:\n  clusterIP: {}\n  selector: {{ app: {name} }}\n  ports: [{{ port: 80, targetPort: 8080 }}]\n",
            self.net.address(host)
        );
        self.write(&format!("svc-{name}.yaml"), &svc);
    }

    /// Server pod `i` as an endpoint of service `app`.
    pub fn pod(&self, app: &str, i: usize) {
        let ip: Ipv4Addr = self.servers[i].ip();
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {app}-{i}, namespace: shop, labels: {{ app: {app} }} }}\nstatus: {{ podIP: {ip} }}\n"
        );
        self.write(&format!("{app}-{i}.yaml"), &pod);
    }

    pub fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.store.0.join(file), yaml).unwrap();
    }

    /// Starts the controller and every proxy.
    pub fn run(&mut self) {
        self.start_controller();
        let mut proxies: Vec<ProxyProcess> =
            self.servers.iter().map(|s| s.start_proxy(PROXY.as_ref(), &[])).collect();
        let env = [
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", CONTROLLER),
            ("LINKERD2_PROXY_POLICY_WORKLOAD", "shop:client"),
        ];
        proxies.push(self.client.start_proxy(PROXY.as_ref(), &env));
        self.proxies = proxies;
    }

    /// Where `web.shop` is.
    pub fn service_addr(&self) -> SocketAddr {
        self.addr(200)
    }

    pub fn addr(&self, host: u8) -> SocketAddr {
        (self.net.address(host), 80).into()
    }

    pub fn add_endpoint(&self, i: usize) {
        self.pod("web", i);
    }

    pub fn remove_endpoint(&self, i: usize) {
        std::fs::remove_file(self.store.0.join(format!("web-{i}.yaml"))).unwrap();
    }

    /// The controller, in the client pod, as a runtime of its own: dropping
    /// it closes every socket it had, as killing a process would.
    pub fn start_controller(&mut self) {
        let rt = self.client.new_runtime();
        let dir = self.store.0.clone();
        rt.block_on(rt.spawn(async move {
            let index = Arc::new(Mutex::new(weft_store::Index::new(weft_store::Config::default())));
            weft_store::DirSource::new(&dir).watch(index.clone()).unwrap();
            let listener = tokio::net::TcpListener::bind(CONTROLLER).await.expect("binding the controller");
            tokio::spawn(weft_controller::serve_grpc(listener, index, weft_controller::Metrics::new(), None));
        }))
        .unwrap();
        self.controller = Some(rt);
    }

    pub fn kill_controller(&mut self) {
        if let Some(rt) = self.controller.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }

    /// The HTTP app on port 8080 of every server pod.
    pub fn http_apps(&self) -> Vec<Arc<HttpStats>> {
        self.servers
            .iter()
            .map(|s| {
                let (stats, serve) = apps::http(s.listen(8080));
                s.spawn(serve);
                stats
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_controller();
    }
}

pub fn counts(stats: &[Arc<HttpStats>]) -> Vec<usize> {
    stats.iter().map(|s| s.requests.load(Ordering::SeqCst)).collect()
}

/// Polls a condition that other processes make true (there is nothing to
/// subscribe to across them).
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

pub async fn connect(dst: SocketAddr) -> Sender {
    let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// A GET of `/` to `web.shop`: its status when 200, else an error with
/// the body.
pub async fn get(send: &mut Sender) -> Result<StatusCode, String> {
    let (status, body, _) = request(send, "/").await?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(status)
}

/// A GET of `path`: status, body and headers.
pub async fn request(send: &mut Sender, path: &str) -> Result<(StatusCode, Bytes, http::HeaderMap), String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let req = Request::get(path).header("host", "web.shop.svc.cluster.local").body(Empty::new()).unwrap();
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, body, parts.headers))
}
