//! `weft demo`: a whole mesh on this machine. The controller (with the
//! identity CA) runs in this process over a generated store directory; each
//! workload of the demo application is a process of its own beside its own
//! weft-proxy, on an address of its own in 127.0.0.0/8, with mesh TLS
//! between the proxies.
//!
//! Children die with the demo (`PR_SET_PDEATHSIG`), Ctrl-C stops them in
//! order, and a run killed outright is cleaned up by the next one, from the
//! pid file it left.

pub mod apps;
mod netns;
pub mod run;

use anyhow::{Context, bail};
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use weft_controller::identity::{Ca, CaConfig, LocalTokens};
use weft_identity::{Names, TokenKey, ca};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its store, identity material and logs (made
    /// afresh on each start).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Requests per second from the vote bot.
    #[arg(long, default_value_t = 10)]
    rps: u32,
    /// The weft-proxy binary (default: next to this one).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    proxy: Option<PathBuf>,
    /// As root: each workload in a network namespace of its own with
    /// proxy-init's iptables rules, as a pod runs (10.77.0.0/24, inside
    /// the namespaces only).
    #[arg(long)]
    netns: bool,
}

/// The group weft-proxy runs as in `--netns` mode: proxy-init's rules let
/// its own connections through.
const PROXY_GID: u32 = 2102;

/// Where a workload is: its pod's address, in either mode.
fn pod_ip(netns: bool, host: u8) -> Ipv4Addr {
    if netns { netns::ip_of(host) } else { addr(host) }
}

/// The controller's gRPC address as the proxies reach it.
fn controller_grpc(netns: bool) -> SocketAddr {
    if netns { SocketAddr::from((netns::ip_of(2), 8086)) } else { CONTROLLER_GRPC }
}

/// A serving workload's cluster IP (`--netns`).
fn cluster_ip(index: usize) -> Ipv4Addr {
    netns::ip_of(200 + index as u8)
}

/// A workload: its name (app label, service account, service), the last
/// octet of its address, and whether it serves (a service in front of it).
struct Workload {
    name: &'static str,
    host: u8,
    serves: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "web", host: 10, serves: true },
    Workload { name: "emoji", host: 11, serves: true },
    Workload { name: "voting", host: 12, serves: true },
    Workload { name: "leaderboard", host: 13, serves: true },
    Workload { name: "vote-bot", host: 14, serves: false },
];

/// The demo's addresses: 127.0.77.0/24, so it stays out of the way of
/// whatever uses 127.0.0.1.
pub(crate) fn addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 77, host)
}

/// The controller's addresses are `weft controller`'s defaults, so that
/// `weft stat`, `weft check` and the rest find it without flags.
pub const CONTROLLER_GRPC: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8086);
pub const CONTROLLER_ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9990);
/// The service port, where each workload's proxy listens inbound.
const SERVICE_PORT: u16 = 8080;
/// Where each application listens, behind its proxy.
const APP_PORT: u16 = 18080;

pub fn default_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("weft-demo-{uid}"))
}

/// The children, so that they can be stopped from a signal handler task.
#[derive(Default)]
struct Children(Mutex<Vec<(String, Child)>>);

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let weft = std::env::current_exe().context("finding this program")?;
    let proxy = args.proxy.clone().unwrap_or_else(|| weft.with_file_name("weft-proxy"));
    if !proxy.exists() {
        bail!("{} not found: build it (`cargo build -p weft-proxy`) or pass --proxy PATH", proxy.display());
    }
    // SAFETY: geteuid has no preconditions.
    if args.netns && unsafe { libc::geteuid() } != 0 {
        bail!(
            "--netns needs root (it makes network namespaces and iptables rules); without it, `weft demo` runs on 127.0.77.0/24"
        );
    }
    clean_previous(&dir)?;
    if args.netns {
        netns::clean()?;
        netns::create_bridge()?;
        netns::create_pod("control", 2)?;
        for w in WORKLOADS {
            netns::create_pod(w.name, w.host)?;
        }
        check_free(CONTROLLER_ADMIN)?;
    } else {
        for port in [CONTROLLER_GRPC, CONTROLLER_ADMIN] {
            check_free(port)?;
        }
        for w in WORKLOADS {
            for port in [SERVICE_PORT, APP_PORT, 4140, 4191, 4190] {
                check_free(SocketAddr::from((addr(w.host), port)))?;
            }
        }
    }

    // Identity and store.
    let names = Names::default();
    let identity_dir = dir.join("identity");
    ca::init(&identity_dir, &names, SystemTime::now())?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::write(store.join("demo.yaml"), manifests(args.netns))?;
    let tokens = TokenKey::from_stored(&std::fs::read_to_string(identity_dir.join(ca::TOKEN_KEY))?)
        .map_err(|e| anyhow::anyhow!(e))?;

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if args.netns {
        // The controller's threads live in the control pod, so that it
        // reaches the proxies (scrapes, taps) and they reach it.
        builder.on_thread_start(|| netns::enter("control").expect("entering the control pod's namespace"));
    }
    let runtime = builder.build()?;
    let children = Arc::new(Children::default());
    let result = runtime.block_on(async {
        // Handlers first: a Ctrl-C from here on stops the demo cleanly.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("a SIGINT handler")?;
        start_controller(&identity_dir, &store, &tokens, args.netns).await?;
        let anchors = std::fs::read_to_string(identity_dir.join(ca::ANCHOR_CERT))?;
        for w in WORKLOADS {
            let token = dir.join(format!("{}.token", w.name));
            std::fs::write(
                &token,
                tokens.issue("demo", w.name, Duration::from_secs(30 * 86_400), SystemTime::now()),
            )?;
            let child = start_proxy(&proxy, &dir, w, &names, &anchors, &token, args.netns)?;
            children.push(format!("{}-proxy", w.name), child, &dir);
            // Checked from the runtime's threads, which are where the
            // proxies can be reached in either mode.
            let admin = SocketAddr::from((pod_ip(args.netns, w.host), 4191));
            let ready = tokio::spawn(wait_ready_at(admin)).await.map_err(|e| anyhow::anyhow!(e))?;
            ready.with_context(|| {
                format!("the {} proxy (log: {})", w.name, log(&dir, &format!("{}-proxy", w.name)).display())
            })?;
            let child = start_app(&weft, &dir, w, args.rps, args.netns)?;
            children.push(w.name.to_string(), child, &dir);
        }
        print_up(&dir, &store, args.netns);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    });
    println!("\nweft demo: stopping");
    children.stop_all();
    if args.netns {
        // Their interfaces and iptables rules go with them.
        netns::clean()?;
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result?;
    println!("weft demo: stopped; every process it started has exited");
    Ok(())
}

const PID_FILE: &str = "demo.pids";

impl Children {
    fn push(&self, name: String, child: Child, dir: &Path) {
        let mut children = self.0.lock().unwrap_or_else(|p| p.into_inner());
        children.push((name, child));
        let pids: Vec<String> = children.iter().map(|(_, c)| c.id().to_string()).collect();
        let _ = std::fs::write(dir.join(PID_FILE), pids.join("\n") + "\n");
    }

    /// SIGTERM to each (applications first, then proxies, so no request
    /// is cut by its own proxy going away), then SIGKILL what is left.
    fn stop_all(&self) {
        let mut children = self.0.lock().unwrap_or_else(|p| p.into_inner());
        children.sort_by_key(|(name, _)| name.ends_with("-proxy"));
        for (_, child) in children.iter() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, child) in children.iter_mut() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("weft demo: {name} did not stop; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        children.clear();
    }
}

/// Ends what a previous run (killed before it could clean up) left, then
/// removes its directory.
fn clean_previous(dir: &Path) -> anyhow::Result<()> {
    if let Ok(pids) = std::fs::read_to_string(dir.join(PID_FILE)) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // Only processes that are still weft's: a pid may have been reused.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("weft") {
                println!("weft demo: stopping process {pid} left by an earlier run");
                // SAFETY: kill(2) on a pid whose command line is weft's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

fn check_free(addr: SocketAddr) -> anyhow::Result<()> {
    // A killed run's sockets close with its processes; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => bail!("{addr} is taken ({e}); is another weft demo running? stop it first"),
        }
    }
}

/// The demo's resources, as `kubectl apply` would take them.
fn manifests(netns: bool) -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: { name: demo }\n");
    for (i, w) in WORKLOADS.iter().enumerate() {
        if w.serves {
            let cluster_ip = if netns { format!("\n  clusterIP: {}", cluster_ip(i)) } else { String::new() };
            yaml += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: demo }}\nspec:{cluster_ip}\n  selector: {{ app: {name} }}\n  ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: {SERVICE_PORT} }}]\n",
                name = w.name
            );
        }
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  namespace: demo\n  labels: {{ app: {name}, linkerd.io/control-plane-ns: weft }}\nspec:\n  serviceAccountName: {name}\n  containers: [{{ name: app, ports: [{{ name: http, containerPort: {SERVICE_PORT} }}] }}]\nstatus: {{ podIP: {ip} }}\n",
            name = w.name,
            ip = pod_ip(netns, w.host)
        );
    }
    yaml
}

async fn start_controller(
    identity_dir: &Path,
    store: &Path,
    tokens: &TokenKey,
    netns: bool,
) -> anyhow::Result<()> {
    let index = Arc::new(Mutex::new(weft_store::Index::new(weft_store::Config::default())));
    weft_store::DirSource::new(store).watch(index.clone()).context("loading the demo store")?;
    let metrics = weft_controller::Metrics::new();
    let config = CaConfig {
        dir: identity_dir.into(),
        names: Names::default(),
        lifetime: Duration::from_secs(24 * 3600),
        clock_skew: Duration::from_secs(20),
    };
    let ca = Ca::load(config, Box::new(LocalTokens(tokens.clone())), metrics.clone())?;
    tokio::spawn(ca.clone().watch(Duration::from_secs(2)));
    // Bound on a runtime thread: in `--netns` mode, in the control pod.
    let grpc = tokio::spawn(tokio::net::TcpListener::bind(controller_grpc(netns)))
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .context("the controller's gRPC port")?;
    // The admin port stays where the command line runs (this thread).
    let admin =
        tokio::net::TcpListener::bind(CONTROLLER_ADMIN).await.context("the controller's admin port")?;
    let observer = weft_controller::observe::Observer::new(index.clone(), Duration::from_secs(2));
    observer.enable_tap(ca.clone());
    tokio::spawn(observer.clone().run());
    tokio::spawn(weft_controller::serve_admin(admin, index.clone(), metrics.clone(), Some(observer)));
    tokio::spawn(weft_controller::serve_grpc(grpc, index, metrics, Some(ca)));
    Ok(())
}

pub(crate) fn log(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// A child that dies with the demo, logging to a file.
pub(crate) fn spawn(mut cmd: Command, dir: &Path, name: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log(dir, name))?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only
    // affects the child being started.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {name}"))
}

fn start_proxy(
    proxy: &Path,
    dir: &Path,
    w: &Workload,
    names: &Names,
    anchors: &str,
    token: &Path,
    netns: bool,
) -> anyhow::Result<Child> {
    let ip = addr(w.host);
    let controller = controller_grpc(netns);
    let mut cmd = if netns {
        // As a pod: proxy-init's rules redirect the pod's traffic to the
        // proxy's default listeners; the proxy's group is let through.
        let rules =
            weft_proxy_init::Rules { proxy_uid: None, proxy_gid: Some(PROXY_GID), ..Default::default() };
        rules
            .apply(&weft_proxy_init::Iptables { netns: Some(netns::ns_of(w.name)) })
            .map_err(|e| anyhow::anyhow!("proxy-init for {}: {e}", w.name))?;
        let mut cmd = netns::command(w.name, proxy);
        std::os::unix::process::CommandExt::gid(&mut cmd, PROXY_GID);
        cmd
    } else {
        let mut cmd = Command::new(proxy);
        cmd.env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", format!("{ip}:{SERVICE_PORT}"))
            .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", format!("{ip}:4140"))
            .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", format!("{ip}:4191"))
            .env("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", format!("{ip}:4190"))
            .env("WEFT_PROXY_INBOUND_FORWARD", format!("{ip}:{APP_PORT}"))
            // No iptables here: the application sends to its proxy, which
            // routes by the authority it asks for.
            .env("LINKERD2_PROXY_INGRESS_MODE", "true");
        cmd
    };
    cmd.env("LINKERD2_PROXY_DESTINATION_SVC_ADDR", controller.to_string())
        .env("LINKERD2_PROXY_DESTINATION_SVC_NAME", names.destination_service())
        .env("LINKERD2_PROXY_POLICY_WORKLOAD", format!("demo:{}-0", w.name))
        .env("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", names.workload("demo", w.name))
        .env("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", anchors)
        .env("LINKERD2_PROXY_IDENTITY_TOKEN_FILE", token)
        .env("LINKERD2_PROXY_IDENTITY_SVC_ADDR", controller.to_string())
        .env("LINKERD2_PROXY_IDENTITY_SVC_NAME", names.identity_service())
        .env("LINKERD2_PROXY_TAP_SVC_NAME", names.tap_service())
        .env("LINKERD2_PROXY_LOG", "warn,weft=info");
    spawn(cmd, dir, &format!("{}-proxy", w.name))
}

fn start_app(weft: &Path, dir: &Path, w: &Workload, rps: u32, netns: bool) -> anyhow::Result<Child> {
    let ip = addr(w.host);
    let mut cmd = if netns {
        // As in a pod: services dialled by their cluster IPs, redirected.
        let mut cmd = netns::command(w.name, weft);
        let services: Vec<String> = WORKLOADS
            .iter()
            .enumerate()
            .filter(|(_, w)| w.serves)
            .map(|(i, w)| format!("{}={}:{SERVICE_PORT}", w.name, cluster_ip(i)))
            .collect();
        cmd.args(["demo-app", w.name, "--service", &services.join(",")]);
        if w.serves {
            cmd.args(["--listen", &format!("0.0.0.0:{SERVICE_PORT}")]);
        }
        cmd
    } else {
        let mut cmd = Command::new(weft);
        cmd.args(["demo-app", w.name, "--via", &format!("{ip}:4140")]);
        if w.serves {
            cmd.args(["--listen", &format!("{ip}:{APP_PORT}")]);
        }
        cmd
    };
    if w.name == "vote-bot" {
        cmd.args(["--rps", &rps.to_string()]);
    }
    spawn(cmd, dir, w.name)
}

/// Until the proxy has its certificate and answers `/ready`.
pub(crate) async fn wait_ready_at(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(200) = crate::http_status(admin, "/ready").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready after 20s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_up(dir: &Path, store: &Path, netns: bool) {
    println!("weft demo is up: a mesh of {} workloads, mutual TLS between every proxy", WORKLOADS.len());
    println!();
    println!("  {:<12} {:<18} {:<16} SPEAKS", "WORKLOAD", "ADDRESS", "PROXY ADMIN");
    for w in WORKLOADS {
        let speaks = match w.name {
            "web" => "HTTP/1 in; gRPC and HTTP/2 out",
            "emoji" | "voting" => "gRPC",
            "leaderboard" => "HTTP/2",
            _ => "HTTP/1 out, to web",
        };
        let ip = pod_ip(netns, w.host);
        let address = if w.serves { format!("{ip}:{SERVICE_PORT}") } else { "-".into() };
        println!("  {:<12} {:<18} {:<16} {speaks}", w.name, address, format!("{ip}:4191"));
    }
    println!();
    println!("  controller   gRPC {}, admin http://{CONTROLLER_ADMIN}/metrics", controller_grpc(netns));
    println!("  store        {} (edit the YAML: the mesh follows)", store.display());
    println!("  logs         {}", dir.join("logs").display());
    println!("  dashboard    http://{CONTROLLER_ADMIN}/ (`weft dashboard` opens it)");
    println!();
    if netns {
        println!("  pods         network namespaces weftdemo-*, with proxy-init's iptables rules");
        println!();
    }
    println!("Try:");
    if netns {
        println!(
            "  ip netns exec weftdemo-vote-bot curl -s http://{}:8080/leaderboard   # redirected through the bot's proxy",
            cluster_ip(0)
        );
    } else {
        println!(
            "  curl -s -x {}:4140 http://web.demo.svc.cluster.local:8080/vote/rocket   # through the bot's proxy",
            addr(14)
        );
    }
    println!(
        "  weft diagnostics proxy-metrics -n demo web-0 | grep ^response_total     # web's golden metrics"
    );
    println!("  weft dashboard                               # the mesh at a glance, live, in a browser");
    println!("  weft check                                   # is everything healthy?");
    println!("  weft stat -n demo                            # golden metrics per workload");
    println!("  weft edges -n demo                           # who talks to whom, over mTLS");
    println!("  weft tap -n demo deploy/web                  # live requests, with identities");
    println!("  weft diagnostics policy --workload demo:web-0 --port 8080");
    println!("  weft authz --store {} -n demo web-0", store.display());
    println!();
    println!("Ctrl-C stops the demo.");
}
