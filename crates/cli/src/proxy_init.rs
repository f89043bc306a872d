//! `weft proxy-init`: the flags of Linkerd's proxy-init, over the rules in
//! the `weft-proxy-init` crate.

use anyhow::Context;
use weft_proxy_init::{Iptables, PortRange, Rules};

#[derive(clap::Args)]
pub struct Args {
    /// The proxy's inbound listener port.
    #[arg(long, default_value_t = 4143)]
    incoming_proxy_port: u16,
    /// The proxy's outbound listener port.
    #[arg(long, default_value_t = 4140)]
    outgoing_proxy_port: u16,
    /// The UID the proxy runs as; its connections are not redirected.
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// The GID the proxy runs as, instead of (or as well as) its UID.
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Inbound ports not to redirect (comma-separated ports or ranges).
    #[arg(long, value_delimiter = ',', default_value = "4190,4191", value_parser = parse_port)]
    inbound_ports_to_ignore: Vec<PortRange>,
    /// Outbound ports not to redirect (comma-separated ports or ranges).
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    outbound_ports_to_ignore: Vec<PortRange>,
    /// Destination subnets (CIDR, comma-separated) not to redirect.
    #[arg(long, value_delimiter = ',')]
    subnets_to_ignore: Vec<String>,
    /// Apply the rules inside this network namespace (`ip netns` name).
    #[arg(long)]
    netns: Option<String>,
    /// Remove the rules instead of writing them.
    #[arg(long)]
    remove: bool,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

fn parse_port(s: &str) -> Result<PortRange, String> {
    PortRange::parse(s.trim()).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let iptables = Iptables { netns: args.netns.clone() };
    if args.remove && args.dry_run {
        anyhow::bail!("--dry-run shows what would be written; it cannot be combined with --remove");
    }
    if args.remove {
        weft_proxy_init::remove(&iptables).context("removing the proxy's iptables rules")?;
        return Ok(());
    }
    let rules = Rules {
        incoming_proxy_port: args.incoming_proxy_port,
        outgoing_proxy_port: args.outgoing_proxy_port,
        // Linkerd's default proxy UID when neither is given.
        proxy_uid: args.proxy_uid.or(args.proxy_gid.is_none().then_some(2102)),
        proxy_gid: args.proxy_gid,
        inbound_ports_to_ignore: args.inbound_ports_to_ignore,
        outbound_ports_to_ignore: args.outbound_ports_to_ignore,
        subnets_to_ignore: args.subnets_to_ignore,
    };
    if args.dry_run {
        rules.validate()?;
        for command in rules.script(&iptables) {
            println!("{command}");
        }
        return Ok(());
    }
    rules.apply(&iptables).context("writing the proxy's iptables rules")?;
    Ok(())
}
