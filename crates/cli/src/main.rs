//! `weft`: the command line of the weft service mesh.

mod authz;
mod controller;
mod identity;
mod proxy_init;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "weft", version, about = "weft: a service mesh written in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write (or remove) the iptables rules that send a pod's traffic
    /// through weft-proxy, as Linkerd's proxy-init does.
    ProxyInit(proxy_init::Args),
    /// Run the control plane: destination and outbound-policy APIs over a
    /// store of resources.
    Controller(controller::Args),
    /// The authorizations that apply to a workload's ports (local mode:
    /// read from the store directory).
    Authz(authz::AuthzArgs),
    /// Ask the controller what it serves.
    #[command(subcommand)]
    Diagnostics(authz::Diagnostics),
    /// The mesh's identity: create a CA, issue workload tokens.
    #[command(subcommand)]
    Identity(identity::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ProxyInit(args) => proxy_init::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Identity(command) => identity::run(command),
        Command::Authz(args) => authz::authz(args),
        Command::Diagnostics(command) => authz::diagnostics(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft: {error:#}");
            ExitCode::FAILURE
        }
    }
}
