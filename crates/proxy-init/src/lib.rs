//! The iptables rules that send a pod's TCP traffic through weft-proxy, as
//! Linkerd's proxy-init writes them: connections arriving at the pod go to
//! the inbound listener (4143), connections the pod makes go to the
//! outbound listener (4140), except the proxy's own (by UID or GID),
//! loopback, and the ports and subnets the operator chose to skip.
//!
//! The rules live in two chains of the `nat` table so that applying them
//! again replaces them (idempotent) and removing them leaves nothing behind.

use std::{fmt, process::Command};

pub const REDIRECT_CHAIN: &str = "PROXY_INIT_REDIRECT";
pub const OUTPUT_CHAIN: &str = "PROXY_INIT_OUTPUT";
/// Where the chains are jumped to from.
const HOOKS: [(&str, &str); 2] = [("PREROUTING", REDIRECT_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub incoming_proxy_port: u16,
    pub outgoing_proxy_port: u16,
    /// The proxy's user: its own connections are never redirected.
    pub proxy_uid: Option<u32>,
    /// Or its group, where the proxy runs under a shared UID.
    pub proxy_gid: Option<u32>,
    /// Inbound ports to leave alone (the proxy's admin and control ports).
    pub inbound_ports_to_ignore: Vec<PortRange>,
    pub outbound_ports_to_ignore: Vec<PortRange>,
    /// Destination subnets (CIDR) the pod reaches without the proxy.
    pub subnets_to_ignore: Vec<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a port or a port range such as 4000-4100")]
    BadPort(String),
    #[error("{0:?} is not a subnet in CIDR form such as 10.0.0.0/8")]
    BadSubnet(String),
    #[error("either a proxy UID or a proxy GID is needed, or the proxy's own traffic would loop")]
    NoProxyOwner,
    #[error("failed to run {command}: {source} (is iptables installed?)")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// How iptables is run: directly, or inside a network namespace.
#[derive(Clone, Debug, Default)]
pub struct Iptables {
    /// Runs `ip netns exec NAME iptables ...` when set.
    pub netns: Option<String>,
}

// === impl Rules ===

impl Default for Rules {
    fn default() -> Self {
        Self {
            incoming_proxy_port: 4143,
            outgoing_proxy_port: 4140,
            proxy_uid: Some(2102),
            proxy_gid: None,
            inbound_ports_to_ignore: vec![PortRange(4190, 4191)],
            outbound_ports_to_ignore: vec![],
            subnets_to_ignore: vec![],
        }
    }
}

impl Rules {
    pub fn validate(&self) -> Result<(), Error> {
        if self.proxy_uid.is_none() && self.proxy_gid.is_none() {
            return Err(Error::NoProxyOwner);
        }
        for subnet in &self.subnets_to_ignore {
            parse_cidr(subnet)?;
        }
        Ok(())
    }

    /// The rules, as iptables argument lists, in the order they are added
    /// to the two chains.
    pub fn chain_rules(&self) -> Vec<Vec<String>> {
        let mut rules = Vec::new();
        let mut add = |args: &[&str]| rules.push(args.iter().map(|s| s.to_string()).collect());

        // Inbound: everything arriving over TCP, but the ignored ports.
        let ignored_in = multiport(&self.inbound_ports_to_ignore);
        for ports in &ignored_in {
            add(&[
                "-A",
                REDIRECT_CHAIN,
                "-p",
                "tcp",
                "--match",
                "multiport",
                "--dports",
                ports,
                "-j",
                "RETURN",
            ]);
        }
        let incoming = self.incoming_proxy_port.to_string();
        add(&["-A", REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-port", &incoming]);

        // Outbound: the proxy's own connections leave as they are.
        if let Some(uid) = self.proxy_uid {
            let uid = uid.to_string();
            add(&["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]);
        }
        if let Some(gid) = self.proxy_gid {
            let gid = gid.to_string();
            add(&["-A", OUTPUT_CHAIN, "-m", "owner", "--gid-owner", &gid, "-j", "RETURN"]);
        }
        // Containers of one pod talk over loopback without the proxy.
        add(&["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"]);
        for subnet in &self.subnets_to_ignore {
            add(&["-A", OUTPUT_CHAIN, "-d", subnet, "-j", "RETURN"]);
        }
        for ports in &multiport(&self.outbound_ports_to_ignore) {
            add(&[
                "-A",
                OUTPUT_CHAIN,
                "-p",
                "tcp",
                "--match",
                "multiport",
                "--dports",
                ports,
                "-j",
                "RETURN",
            ]);
        }
        let outgoing = self.outgoing_proxy_port.to_string();
        add(&["-A", OUTPUT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-port", &outgoing]);
        rules
    }

    /// The commands that write the rules into a namespace that has none,
    /// for `--dry-run`.
    pub fn script(&self, iptables: &Iptables) -> Vec<String> {
        let mut script = vec![];
        for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
            script.push(iptables.describe(&["-t", "nat", "-N", chain]));
        }
        for rule in self.chain_rules() {
            let mut args = vec!["-t", "nat"];
            args.extend(rule.iter().map(String::as_str));
            script.push(iptables.describe(&args));
        }
        for (hook, chain) in HOOKS {
            script.push(iptables.describe(&["-t", "nat", "-A", hook, "-j", chain]));
        }
        script
    }

    /// Writes the rules, replacing any that an earlier run wrote.
    pub fn apply(&self, iptables: &Iptables) -> Result<(), Error> {
        self.validate()?;
        for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
            if iptables.run_ok(&["-t", "nat", "-N", chain])?.is_err() {
                // It exists already: empty it, then fill it again below.
                iptables.run(&["-t", "nat", "-F", chain])?;
            }
        }
        for rule in self.chain_rules() {
            let mut args = vec!["-t", "nat"];
            args.extend(rule.iter().map(String::as_str));
            iptables.run(&args)?;
        }
        for (hook, chain) in HOOKS {
            if iptables.run_ok(&["-t", "nat", "-C", hook, "-j", chain])?.is_err() {
                iptables.run(&["-t", "nat", "-A", hook, "-j", chain])?;
            }
        }
        Ok(())
    }
}

/// Removes every rule and chain that [`Rules::apply`] writes. Removing what
/// is not there is not an error.
pub fn remove(iptables: &Iptables) -> Result<(), Error> {
    for (hook, chain) in HOOKS {
        // The jump may have been added more than once by hand: delete all.
        while iptables.run_ok(&["-t", "nat", "-D", hook, "-j", chain])?.is_ok() {}
    }
    for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
        if iptables.run_ok(&["-t", "nat", "-F", chain])?.is_ok() {
            iptables.run(&["-t", "nat", "-X", chain])?;
        }
    }
    Ok(())
}

/// iptables' multiport match takes at most 15 ports (a range counts as
/// two), so long lists become several rules.
fn multiport(ranges: &[PortRange]) -> Vec<String> {
    let mut out = Vec::new();
    let mut group: Vec<String> = Vec::new();
    let mut slots = 0;
    for &PortRange(lo, hi) in ranges {
        let (item, cost) = if lo == hi { (lo.to_string(), 1) } else { (format!("{lo}:{hi}"), 2) };
        if slots + cost > 15 {
            out.push(group.join(","));
            group.clear();
            slots = 0;
        }
        group.push(item);
        slots += cost;
    }
    if !group.is_empty() {
        out.push(group.join(","));
    }
    out
}

// === impl PortRange ===

impl PortRange {
    /// Parses `4191` or `4000-4100`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadPort(s.to_string());
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let range = match s.split_once('-') {
            Some((lo, hi)) => PortRange(port(lo)?, port(hi)?),
            None => PortRange(port(s)?, port(s)?),
        };
        if range.0 > range.1 {
            return Err(bad());
        }
        Ok(range)
    }

    /// Parses a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, Error> {
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Self::parse).collect()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 { write!(f, "{}", self.0) } else { write!(f, "{}-{}", self.0, self.1) }
    }
}

fn parse_cidr(s: &str) -> Result<(), Error> {
    let bad = || Error::BadSubnet(s.to_string());
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

// === impl Iptables ===

impl Iptables {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "iptables"]);
                c
            }
            None => Command::new("iptables"),
        };
        // Wait for the xtables lock rather than failing when another
        // process (a parallel pod's init) holds it.
        cmd.arg("-w").args(args);
        cmd
    }

    pub fn describe(&self, args: &[&str]) -> String {
        let prefix = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} iptables -w"),
            None => "iptables -w".to_string(),
        };
        format!("{prefix} {}", args.join(" "))
    }

    /// Runs a command that must succeed.
    fn run(&self, args: &[&str]) -> Result<(), Error> {
        match self.run_ok(args)? {
            Ok(()) => Ok(()),
            Err(stderr) => Err(Error::Failed { command: self.describe(args), stderr }),
        }
    }

    /// Runs a command whose failure is an answer (does this rule exist?):
    /// the outer error is for failing to run it at all.
    fn run_ok(&self, args: &[&str]) -> Result<Result<(), String>, Error> {
        let out = self
            .command(args)
            .output()
            .map_err(|source| Error::Spawn { command: self.describe(args), source })?;
        if out.status.success() {
            Ok(Ok(()))
        } else {
            Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_linkerds() {
        let rules: Vec<String> = Rules::default().chain_rules().iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            rules,
            [
                "-A PROXY_INIT_REDIRECT -p tcp --match multiport --dports 4190:4191 -j RETURN",
                "-A PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-port 4143",
                "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
                "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
            ]
        );
    }

    #[test]
    fn skips_subnets_and_ports() {
        let rules = Rules {
            proxy_uid: None,
            proxy_gid: Some(2102),
            subnets_to_ignore: vec!["10.96.0.0/12".into()],
            outbound_ports_to_ignore: vec![PortRange(443, 443), PortRange(8000, 8100)],
            ..Rules::default()
        };
        rules.validate().unwrap();
        let text: Vec<String> = rules.chain_rules().iter().map(|r| r.join(" ")).collect();
        assert!(text.contains(&"-A PROXY_INIT_OUTPUT -m owner --gid-owner 2102 -j RETURN".to_string()));
        assert!(text.contains(&"-A PROXY_INIT_OUTPUT -d 10.96.0.0/12 -j RETURN".to_string()));
        assert!(text.contains(
            &"-A PROXY_INIT_OUTPUT -p tcp --match multiport --dports 443,8000:8100 -j RETURN".to_string()
        ));
    }

    #[test]
    fn long_port_lists_are_split() {
        let ports: Vec<PortRange> = (1..=20).map(|p| PortRange(p, p)).collect();
        let groups = multiport(&ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].split(',').count(), 15);
    }

    #[test]
    fn bad_input_is_refused_with_the_value() {
        assert!(matches!(PortRange::parse("http"), Err(Error::BadPort(p)) if p == "http"));
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("9-1").is_err());
        assert_eq!(
            PortRange::parse_list("4190, 4191-4192").unwrap(),
            vec![PortRange(4190, 4190), PortRange(4191, 4192)]
        );
        let rules = Rules { subnets_to_ignore: vec!["10.0.0.0".into()], ..Rules::default() };
        assert!(matches!(rules.validate(), Err(Error::BadSubnet(_))));
        let rules = Rules { proxy_uid: None, ..Rules::default() };
        assert!(matches!(rules.validate(), Err(Error::NoProxyOwner)));
    }
}
