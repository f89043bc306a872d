//! Packet capture with tcpdump on a pod's interface: what really leaves
//! and enters the pod.

use crate::Pod;
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
};

/// A running tcpdump on a pod's `eth0`; killed on drop.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing the packets `filter` (a pcap filter) selects, and
    /// returns once tcpdump says it is listening. Panics, saying what to
    /// install, when tcpdump is missing.
    pub fn start(pod: &Pod, name: &str, filter: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("weft-capture-{name}-{}.pcap", std::process::id()));
        let _ = std::fs::remove_file(&file);
        // nsenter execs tcpdump itself (`ip netns exec` would stand between
        // it and the signal that stops it).
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", pod.netns()))
            .arg("tcpdump")
            // Packets are handed over as they come (--immediate-mode) and
            // written as they are (-U), so stopping loses none.
            .args(["-i", "eth0", "--immediate-mode", "-U", "-n", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running tcpdump (Debian's tcpdump package; .ci/run installs it)");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut said = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                return Capture { child, file };
            }
            said.push(line);
        }
        let _ = child.wait();
        panic!("tcpdump did not start:\n{}", said.join("\n"));
    }

    /// Stops the capture and returns the pcap file's bytes.
    pub fn stop(mut self) -> Vec<u8> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("reading the capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
