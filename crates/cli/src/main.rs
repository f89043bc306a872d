//! `weft`: the command line of the weft service mesh.

mod authz;
mod controller;
mod dashboard;
mod demo;
mod identity;
mod observe;
mod proxy_init;
mod routes;
mod viz;

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
    /// Check that the mesh is healthy: controller, identity, store, proxies.
    Check(observe::CheckArgs),
    /// Golden metrics per workload or pod: success rate, requests per
    /// second, latency percentiles, TCP connections.
    Stat(observe::StatArgs),
    /// Per-route golden metrics from the clients' proxies: effective and
    /// actual success, retries, latency.
    Routes(routes::RoutesArgs),
    /// Who talks to whom, and whether over mutual TLS.
    Edges(observe::EdgesArgs),
    /// Open the dashboard the controller serves: the mesh at a glance, live.
    Dashboard(dashboard::DashboardArgs),
    /// Observability set-up: a Prometheus scrape configuration.
    #[command(subcommand)]
    Viz(viz::Viz),
    /// Live requests and responses through the proxies, with identities.
    Tap(observe::TapArgs),
    /// The busiest paths through the proxies, live.
    Top(observe::TopArgs),
    /// Run a whole mesh on this machine: the controller, a demo
    /// application of five workloads, and a weft-proxy beside each.
    Demo(demo::DemoArgs),
    /// Mesh a program beside a running `weft demo`: its own address, a
    /// weft-proxy with an identity, and (with --port) a service.
    Run(demo::run::RunArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell), e.g. `weft completions bash > /etc/bash_completion.d/weft`.
    Completions { shell: clap_complete::Shell },
    /// One role of the demo application (what `weft demo` runs).
    #[command(hide = true)]
    DemoApp(demo::apps::AppArgs),
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
        Command::Demo(args) => demo::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            Ok(())
        }
        Command::Run(args) => demo::run::run(args),
        Command::Check(args) => observe::check(args),
        Command::Stat(args) => observe::stat(args),
        Command::Edges(args) => observe::edges(args),
        Command::Routes(args) => routes::routes(args),
        Command::Tap(args) => observe::tap(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Viz(command) => viz::run(command),
        Command::Top(args) => observe::top(args),
        Command::DemoApp(args) => demo::apps::run(args),
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

/// The status of a GET to a local admin endpoint.
pub(crate) async fn http_status(addr: std::net::SocketAddr, path: &str) -> std::io::Result<u16> {
    let (status, _) = http_get(addr, path).await?;
    Ok(status)
}

/// A GET to a local admin endpoint: status and body.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock =
        tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other(format!("connecting to {addr} timed out")))??;
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
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response from {addr}")))?;
    Ok((status, body.to_string()))
}
