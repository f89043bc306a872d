//! What the end-to-end tests share: `weft demo` started and stopped as
//! a newcomer would, and the proxies' counters read straight from them.
//! (Each test binary uses part of it.)
#![allow(dead_code)]

pub mod browser;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

pub struct Demo {
    pub child: Child,
    pub dir: std::path::PathBuf,
    output: mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts the demo and waits until it says it is up.
    pub fn start(dir: &std::path::Path) -> Demo {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &std::path::Path, extra: &[&str]) -> Demo {
        let mut child = Command::new(WEFT)
            .args(["demo", "--rps", "40", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running weft demo");
        let (tx, output) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut demo = Demo { child, dir: dir.into(), output };
        demo.expect_line("Ctrl-C stops the demo", Duration::from_secs(60));
        demo
    }

    pub fn expect_line(&mut self, what: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(what);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("weft demo did not say {what:?}; it said:\n{}", seen.join("\n")),
            }
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("demo.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

pub fn metrics(admin: &str) -> String {
    let addr: SocketAddr = admin.parse().unwrap();
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    use std::io::{Read, Write};
    write!(sock, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).unwrap();
    text
}

pub fn sum(text: &str, prefix: &str, contains: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose; its parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

impl Demo {
    /// Ctrl-C, and every process it started has exited.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.expect_line("every process it started has exited", Duration::from_secs(20));
    }
}

/// A GET to a local HTTP server: status and body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().unwrap();
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
    write!(sock, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// The controller's API, as JSON.
pub fn api(path: &str) -> serde_json::Value {
    let (status, body) = get("127.0.0.1:9990", path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}
