//! weft-proxy as a separate process, the way a pod runs it: in a pod with
//! proxy-init's rules ([`Pod::start_proxy`]), or on loopback without root
//! ([`LocalProxy`]).

use crate::{PROXY_GID, Pod};
use std::{
    future::Future,
    io::{self, BufRead, BufReader},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy_init::{Iptables, Rules};

/// A weft-proxy process inside a pod. Killed on drop; its log is printed
/// when the test failed.
pub struct ProxyProcess {
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// A weft-proxy on 127.0.0.1 with ports the kernel chose.
pub struct LocalProxy {
    child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

// === impl Pod ===

impl Pod {
    /// Writes proxy-init's rules into the pod, starts weft-proxy with its
    /// default listeners plus `env`, and waits until it is ready.
    pub fn start_proxy(&self, bin: &Path, env: &[(&str, &str)]) -> ProxyProcess {
        let mut cmd = self.command(bin);
        cmd.env("LINKERD2_PROXY_LOG", "warn,weft=debug")
            .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "30s")
            .envs(env.iter().copied());
        let admin: SocketAddr = env
            .iter()
            .find(|(k, _)| *k == "LINKERD2_PROXY_ADMIN_LISTEN_ADDR")
            .map(|(_, v)| v.parse().expect("a valid admin address"))
            .unwrap_or(([127, 0, 0, 1], 4191).into());
        let admin = match admin.ip().is_unspecified() {
            true => SocketAddr::from(([127, 0, 0, 1], admin.port())),
            false => admin,
        };
        self.start_sidecar("weft-proxy", cmd, admin, "/ready")
    }

    /// Envoy as a sidecar in the same place, for comparison: `config` must
    /// listen on the proxy's ports (4143 inbound, 4140 outbound) with the
    /// original-destination listener filter, and serve admin on
    /// 127.0.0.1:9901.
    pub fn start_envoy(&self, bin: &Path, config: &str) -> ProxyProcess {
        let path = std::env::temp_dir().join(format!("weft-test-{}-envoy.yaml", self.netns()));
        std::fs::write(&path, config).expect("writing Envoy's configuration");
        let mut cmd = self.command(bin);
        cmd.arg("-c").arg(&path).args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]);
        self.start_sidecar("envoy", cmd, ([127, 0, 0, 1], 9901).into(), "/ready")
    }

    /// HAProxy as a sidecar, likewise: `config` must listen on the proxy's
    /// ports and answer `GET /ready` on 127.0.0.1:9902.
    pub fn start_haproxy(&self, bin: &Path, config: &str) -> ProxyProcess {
        let path = std::env::temp_dir().join(format!("weft-test-{}-haproxy.cfg", self.netns()));
        std::fs::write(&path, config).expect("writing HAProxy's configuration");
        let mut cmd = self.command(bin);
        // -db: foreground, no daemon; -W is not used (one process).
        cmd.arg("-db").arg("-f").arg(&path);
        self.start_sidecar("haproxy", cmd, ([127, 0, 0, 1], 9902).into(), "/ready")
    }

    /// Writes proxy-init's rules into the pod, starts a sidecar proxy as
    /// the proxy group, and waits until `ready_path` on `admin` answers 200.
    fn start_sidecar(
        &self,
        what: &str,
        mut cmd: Command,
        admin: SocketAddr,
        ready_path: &'static str,
    ) -> ProxyProcess {
        let rules = Rules { proxy_uid: None, proxy_gid: Some(PROXY_GID), ..Rules::default() };
        rules
            .apply(&Iptables { netns: Some(self.netns().to_string()) })
            .unwrap_or_else(|e| panic!("proxy-init in pod {}: {e}", self.name()));

        let log = std::env::temp_dir().join(format!("weft-test-{}-{what}.log", self.netns()));
        let log_file = std::fs::File::create(&log).expect("creating the proxy's log file");
        cmd.gid(PROXY_GID).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut proxy = ProxyProcess { child, log, exited: None };

        let started = Instant::now();
        loop {
            if let Some(status) = proxy.child.try_wait().expect("polling the proxy") {
                panic!("{what} in pod {} exited with {status}:\n{}", self.name(), proxy.log());
            }
            let ready = self.block_on(async move { http_get(admin, ready_path).await });
            if matches!(ready, Ok((200, _))) {
                return proxy;
            }
            if started.elapsed() > Duration::from_secs(20) {
                panic!("{what} in pod {} not ready after 20s:\n{}", self.name(), proxy.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The proxy's metrics, read from inside the pod.
    pub fn metrics(&self) -> String {
        let (status, body) = self
            .block_on(http_get(([127, 0, 0, 1], 4191).into(), "/metrics"))
            .expect("fetching /metrics from the pod's proxy");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        body
    }
}

// === impl ProxyProcess ===

impl ProxyProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(&self.child, signal)
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let path = &self.log;
        let status =
            wait_child(&mut self.child, timeout, || std::fs::read_to_string(path).unwrap_or_default());
        self.exited = Some(status);
        status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// CPU time (user + system) used so far, to the nanosecond where the
    /// kernel keeps schedstats.
    pub fn cpu_time(&self) -> Duration {
        proc_cpu_time(self.child.id())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- weft-proxy log ({}):\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

// === impl LocalProxy ===

impl LocalProxy {
    /// Starts weft-proxy with every listener on 127.0.0.1 and a port of the
    /// kernel's choosing (unless `env` says otherwise).
    pub fn start(bin: &Path, env: &[(&str, &str)]) -> LocalProxy {
        let mut cmd = Command::new(bin);
        cmd.env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
            .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
            .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
            .env("LINKERD2_PROXY_LOG", "warn,weft=debug")
            .env("LINKERD2_PROXY_LOG_FORMAT", "plain")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut listening = None;
        for line in lines.by_ref() {
            let line = line.expect("reading the proxy's log");
            log.lock().unwrap().push(line.clone());
            if line.contains("weft-proxy is listening") {
                listening = Some(line);
                break;
            }
        }
        let Some(line) = listening else {
            let _ = child.wait();
            panic!("weft-proxy exited before listening:\n{}", log.lock().unwrap().join("\n"));
        };
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).expect("listener address in the log") + name.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().expect("a socket address")
        };
        let proxy = LocalProxy {
            inbound: field("inbound"),
            outbound: field("outbound"),
            admin: field("admin"),
            log: log.clone(),
            child,
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        proxy
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, signal: i32) {
        send_signal(&self.child, signal)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let log = &self.log;
        wait_child(&mut self.child, timeout, || log.lock().unwrap().join("\n"))
    }
}

impl Drop for LocalProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-proxy log:\n{}", self.log());
        }
    }
}

fn send_signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "signalling weft-proxy: {}", io::Error::last_os_error());
}

/// Waits for a child to exit, up to `timeout` (polling: its exit is
/// another process's doing).
fn wait_child(child: &mut Child, timeout: Duration, log: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("polling the proxy") {
            return status;
        }
        assert!(Instant::now() < deadline, "weft-proxy still running after {timeout:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP GET, for admin endpoints: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    // HTTP/1.1 with `Connection: close` (Envoy refuses HTTP/1.0); the
    // servers asked answer with a content-length, so the body is the rest.
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Polls `check` until it holds or `timeout` passes; panics with `what`.
/// For conditions another process makes true, where there is nothing to
/// subscribe to.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time the process has run, to the nanosecond where the kernel keeps
/// schedstats: the sum of `/proc/PID/task/*/schedstat`'s first field (the
/// scheduler's own runtime count). `/proc/PID/stat`'s utime and stime come
/// in 10 ms clock ticks, and a proxy busy for 0.3 s in a measured point reads
/// with a few percent of error from rounding alone; they are the fallback
/// where schedstats are off. A thread that exits takes its runtime out of
/// the sum, so callers subtract with `saturating_sub`; the proxies measured
/// here keep their threads for their lifetime.
fn proc_cpu_time(pid: u32) -> Duration {
    schedstat_runtime(pid).unwrap_or_else(|| stat_cpu_time(pid))
}

/// `None` where no thread's schedstat can be read (schedstats off, or the
/// process gone); a thread that exits between listing and reading is
/// skipped rather than sending the whole reading to the coarser fallback.
fn schedstat_runtime(pid: u32) -> Option<Duration> {
    let runtimes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse().ok())
        .collect();
    (!runtimes.is_empty()).then(|| Duration::from_nanos(runtimes.iter().sum()))
}

fn stat_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 14th and 15th fields overall.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_this_process_running() {
        let pid = std::process::id();
        let before = proc_cpu_time(pid);
        let started = std::time::Instant::now();
        // Spin until the count has moved by 20 ms of CPU (or give up after
        // 10 s of wall clock, which only a machine starving this test hits).
        let mut spins = 0u64;
        while proc_cpu_time(pid).saturating_sub(before) < Duration::from_millis(20) {
            assert!(started.elapsed() < Duration::from_secs(10), "CPU time did not grow while spinning");
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        if schedstat_runtime(pid).is_none() {
            println!("schedstats are off here: CPU time came from /proc/PID/stat's ticks");
        }
    }
}
