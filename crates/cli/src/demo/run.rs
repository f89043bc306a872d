//! `weft run --workload NAME -- COMMAND ...`: meshes any program beside a
//! running `weft demo`: an address of its own, a weft-proxy with an
//! identity, and (with `--port`) a Service in front of it, so the demo's
//! workloads and the program reach each other over mutual TLS.
//!
//! The program finds its proxy in its environment: `http_proxy` and
//! `HTTP_PROXY` (most HTTP clients follow them), `WEFT_PROXY` (the outbound
//! listener), and, with `--port`, `WEFT_LISTEN` (where to serve: the proxy
//! takes the service port and forwards there).

use super::{CONTROLLER_GRPC, addr, default_dir, spawn};
use anyhow::{Context, bail};
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime},
};
use weft_identity::{Names, TokenKey, ca};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The workload's name: its app label, service account and (with
    /// `--port`) service.
    #[arg(long)]
    workload: String,
    /// Serve on this service port (`NAME.demo.svc.cluster.local:PORT`).
    #[arg(long)]
    port: Option<u16>,
    /// The running demo's directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The weft-proxy binary (default: next to this one).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    proxy: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let store = dir.join("store");
    let identity_dir = dir.join("identity");
    if !store.is_dir() || !identity_dir.join(ca::TOKEN_KEY).exists() {
        bail!("no running weft demo in {} (start one with `weft demo`, or pass --dir)", dir.display());
    }
    let name = args.workload.as_str();
    if Names::default().parse(&Names::default().workload("demo", name)).is_none() {
        bail!("--workload {name:?}: a DNS label (lowercase letters, digits, '-') is needed");
    }
    let manifest = store.join(format!("run-{name}.yaml"));
    if manifest.exists() {
        bail!("a workload {name} is already running (its manifest is {})", manifest.display());
    }
    // The first free address after the demo's own.
    let used = std::fs::read_dir(&store)?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect::<String>();
    let host = (20..250u8)
        .find(|h| !used.contains(&format!("podIP: {}", addr(*h))))
        .context("no free address in 127.0.77.0/24")?;
    let ip = addr(host);

    let weft = std::env::current_exe()?;
    let proxy = args.proxy.clone().unwrap_or_else(|| weft.with_file_name("weft-proxy"));
    let tokens = TokenKey::from_stored(&std::fs::read_to_string(identity_dir.join(ca::TOKEN_KEY))?)
        .map_err(|e| anyhow::anyhow!(e))?;
    let token = dir.join(format!("run-{name}.token"));
    std::fs::write(&token, tokens.issue("demo", name, Duration::from_secs(86_400), SystemTime::now()))?;
    let anchors = std::fs::read_to_string(identity_dir.join(ca::ANCHOR_CERT))?;

    let (service_port, listen) = match args.port {
        Some(p) => (p, Some(format!("{ip}:{}", p.checked_add(10_000).context("--port is too high")?))),
        None => (8080, None),
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  namespace: demo\n  labels: {{ app: {name}, linkerd.io/control-plane-ns: weft }}\nspec:\n  serviceAccountName: {name}\n  containers: [{{ name: app, ports: [{{ containerPort: {service_port} }}] }}]\nstatus: {{ podIP: {ip} }}\n"
    );
    if args.port.is_some() {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n  selector: {{ app: {name} }}\n  ports: [{{ port: {service_port}, targetPort: {service_port} }}]\n"
        );
    }

    let names = Names::default();
    let mut cmd = Command::new(&proxy);
    cmd.env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", format!("{ip}:{service_port}"))
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", format!("{ip}:4140"))
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", format!("{ip}:4191"))
        .env("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", format!("{ip}:4190"))
        .env("LINKERD2_PROXY_INGRESS_MODE", "true")
        .env("LINKERD2_PROXY_DESTINATION_SVC_ADDR", CONTROLLER_GRPC.to_string())
        .env("LINKERD2_PROXY_DESTINATION_SVC_NAME", names.destination_service())
        .env("LINKERD2_PROXY_POLICY_WORKLOAD", format!("demo:{name}-0"))
        .env("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", names.workload("demo", name))
        .env("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", &anchors)
        .env("LINKERD2_PROXY_IDENTITY_TOKEN_FILE", &token)
        .env("LINKERD2_PROXY_IDENTITY_SVC_ADDR", CONTROLLER_GRPC.to_string())
        .env("LINKERD2_PROXY_IDENTITY_SVC_NAME", names.identity_service())
        .env("LINKERD2_PROXY_TAP_SVC_NAME", names.tap_service())
        .env("LINKERD2_PROXY_LOG", "warn,weft=info");
    if let Some(listen) = &listen {
        cmd.env("WEFT_PROXY_INBOUND_FORWARD", listen);
    }
    let mut proxy_child = spawn(cmd, &dir, &format!("run-{name}-proxy"))?;
    // The store learns of the workload once its proxy is up to serve it.
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(super::wait_ready_at(std::net::SocketAddr::from((ip, 4191)))).with_context(
            || {
                format!(
                    "the proxy of {name} (log: {})",
                    super::log(&dir, &format!("run-{name}-proxy")).display()
                )
            },
        )?;
        std::fs::write(&manifest, &yaml)?;
        let mut program = Command::new(&args.command[0]);
        program
            .args(&args.command[1..])
            .env("http_proxy", format!("http://{ip}:4140"))
            .env("HTTP_PROXY", format!("http://{ip}:4140"))
            .env("WEFT_PROXY", format!("{ip}:4140"));
        if let Some(listen) = &listen {
            program.env("WEFT_LISTEN", listen);
        }
        eprintln!("weft run: {name} at {ip} (proxy admin {ip}:4191); running {}", args.command.join(" "));
        let status = program.status().with_context(|| format!("running {}", args.command[0]))?;
        anyhow::Ok(status)
    })();
    let _ = std::fs::remove_file(&manifest);
    let _ = std::fs::remove_file(&token);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(proxy_child.id() as i32, libc::SIGTERM) };
    let _ = proxy_child.wait();
    let status = result?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
