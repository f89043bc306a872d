//! `weft demo --netns` (root): each workload in a network namespace of its
//! own, joined by a bridge that lives in a namespace too (nothing is added
//! to the host's network), with proxy-init's iptables rules, the way a pod
//! runs. Every namespace is named `weftdemo-*`; deleting them takes their
//! interfaces and rules along, and a new run deletes what an old one left.

use anyhow::{Context, bail};
use std::{net::Ipv4Addr, os::fd::AsRawFd, process::Command};

pub const PREFIX: &str = "weftdemo-";
const BRIDGE_NS: &str = "weftdemo-br";

pub fn ip_of(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host)
}

pub fn ns_of(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes every namespace an earlier run left.
pub fn clean() -> anyhow::Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("running ip (iproute2)")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(PREFIX) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    Ok(())
}

/// The bridge's namespace and bridge.
pub fn create_bridge() -> anyhow::Result<()> {
    ip(&["netns", "add", BRIDGE_NS])?;
    ip(&["-n", BRIDGE_NS, "link", "set", "lo", "up"])?;
    ip(&["-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", BRIDGE_NS, "link", "set", "br0", "up"])
}

/// A pod: a namespace with `eth0` at `10.77.0.host` on the bridge.
pub fn create_pod(name: &str, host: u8) -> anyhow::Result<()> {
    let ns = ns_of(name);
    let veth = format!("v{host}");
    ip(&["netns", "add", &ns])?;
    ip(&["-n", BRIDGE_NS, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    ip(&["-n", BRIDGE_NS, "link", "set", &veth, "master", "br0", "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{}/24", ip_of(host)), "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])
}

/// Moves the calling thread into a pod's namespace (for the controller's
/// runtime threads).
pub fn enter(name: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/var/run/netns/{}", ns_of(name)))?;
    // SAFETY: setns on a valid namespace fd changes only this thread's
    // network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A command that runs in a pod: `nsenter` execs it (so the demo's
/// signals and PR_SET_PDEATHSIG reach it, not a wrapper).
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{}", ns_of(name))).arg(program);
    cmd
}
