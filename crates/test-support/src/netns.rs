//! Network namespaces as pods, joined by a bridge that lives in a namespace
//! of its own, so nothing is created on the host's network.

use std::{
    fs::File,
    future::Future,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

/// One test's network: a bridge namespace and the pods attached to it.
pub struct Net {
    inner: Arc<NetInner>,
}

struct NetInner {
    /// Short and unique: namespace and interface names start with it.
    prefix: String,
    subnet: [u8; 3],
    next_pod: AtomicU32,
}

/// A pod: a network namespace with one address, and a runtime whose
/// threads live inside it.
pub struct Pod {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    runtime: Option<tokio::runtime::Runtime>,
    _net: Arc<NetInner>,
}

// === impl Net ===

impl Net {
    /// A network for `test`, or `None` (after saying so on stdout) where
    /// this machine cannot make namespaces.
    pub fn for_test(test: &str) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            not_run(test, "it needs root to create network namespaces and iptables rules");
            return None;
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
                not_run(test, &format!("`{tool}` is not installed"));
                return None;
            }
        }
        match Net::new() {
            Ok(net) => Some(net),
            Err(e) => panic!("root, but creating a network namespace failed: {e}"),
        }
    }

    fn new() -> io::Result<Net> {
        // Claim an id by creating its bridge namespace: creation fails if
        // a test running in parallel holds it.
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
        for attempt in 0..500 {
            let id = (seed.wrapping_add(attempt)) % 8000;
            let prefix = format!("wt{id}");
            let bridge_ns = format!("{prefix}-br");
            if !ip(&["netns", "add", &bridge_ns])? {
                continue;
            }
            let inner = NetInner {
                prefix,
                subnet: [10, 100 + (id / 250) as u8, (id % 250) as u8],
                next_pod: AtomicU32::new(0),
            };
            let net = Net { inner: Arc::new(inner) };
            ip_ok(&["-n", &bridge_ns, "link", "set", "lo", "up"])?;
            ip_ok(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
            ip_ok(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
            return Ok(net);
        }
        Err(io::Error::other("no free network id after 500 attempts"))
    }

    /// Adds a pod with the next address in the subnet.
    pub fn pod(&self, name: &str) -> Pod {
        let n = self.inner.next_pod.fetch_add(1, Ordering::Relaxed);
        let [a, b, c] = self.inner.subnet;
        let ip = Ipv4Addr::new(a, b, c, 10 + n as u8);
        let ns = format!("{}-p{n}", self.inner.prefix);
        let bridge_ns = format!("{}-br", self.inner.prefix);
        let veth = format!("v{n}");
        let setup = || -> io::Result<()> {
            ip_ok(&["netns", "add", &ns])?;
            ip_ok(&[
                "-n", &bridge_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip_ok(&["-n", &bridge_ns, "link", "set", &veth, "master", "br0", "up"])?;
            ip_ok(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"])?;
            Ok(())
        };
        let mut pod =
            Pod { name: name.to_string(), ns: ns.clone(), ip, runtime: None, _net: self.inner.clone() };
        if let Err(e) = setup() {
            panic!("setting up pod {name} ({ns}) failed: {e}");
        }
        pod.runtime = Some(pod.new_runtime());
        pod
    }

    /// An address in this network's subnet that no pod has.
    pub fn unused_ip(&self) -> Ipv4Addr {
        self.address(250)
    }

    /// An address in this network's subnet (pods have .10 and up; .200
    /// and up are free for services' cluster IPs).
    pub fn address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.inner.subnet;
        Ipv4Addr::new(a, b, c, host)
    }
}

impl Drop for NetInner {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &format!("{}-br", self.prefix)]);
    }
}

// === impl Pod ===

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// A runtime of its own whose threads live in the pod: what runs on it
    /// stops, sockets and all, when it is dropped (a process, killed).
    pub fn new_runtime(&self) -> tokio::runtime::Runtime {
        let ns = self.ns.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("pod-{}", self.name))
            .on_thread_start(move || enter(&ns).expect("entering the pod's network namespace"))
            .enable_all()
            .build()
            .expect("a runtime for the pod")
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the pod's runtime lives as long as the pod")
    }

    /// Runs a task (a server, say) inside the pod until the pod is dropped.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime().spawn(fut)
    }

    /// Runs a future inside the pod (a client, say) and waits for it.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.runtime();
        match rt.block_on(rt.spawn(fut)) {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// A listener on the pod's address (all interfaces) and `port`.
    pub fn listen(&self, port: u16) -> tokio::net::TcpListener {
        self.block_on(async move { tokio::net::TcpListener::bind(("0.0.0.0", port)).await })
            .unwrap_or_else(|e| panic!("listening on port {port} in pod {}: {e}", self.name))
    }

    /// A command that runs inside the pod.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        // Deleting the namespace takes its veth, and the peer in the bridge
        // namespace, and its iptables rules with it.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Moves the calling thread into a network namespace.
fn enter(ns: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns on a valid namespace fd only changes this thread's
    // network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> io::Result<bool> {
    let out = Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    Ok(out.status.success())
}

fn ip_ok(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn not_run(test: &str, why: &str) {
    let msg = format!("NOT RUN: {test}: {why}; run the tests as root to cover it");
    println!("{msg}");
}
