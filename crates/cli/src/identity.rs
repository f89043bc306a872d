//! `weft identity`: make the mesh's CA and workload tokens without openssl
//! or step.

use anyhow::Context;
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};
use weft_identity::{Names, TokenKey, ca};
use weft_proxy::config::parse_duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a trust anchor (10 years), an issuer signed by it (1 year)
    /// and a token-signing key in DIR, for `weft controller --identity-dir`.
    Init {
        dir: PathBuf,
        #[command(flatten)]
        names: NameArgs,
    },
    /// Replace the issuer in DIR with a new one (1 year) signed by its
    /// trust anchor; a controller watching DIR picks it up, and proxies
    /// need no change.
    RotateIssuer {
        dir: PathBuf,
        #[command(flatten)]
        names: NameArgs,
    },
    /// Print (or write) a token that proves a workload runs as a service
    /// account, for its proxy's LINKERD2_PROXY_IDENTITY_TOKEN_FILE.
    Token {
        /// The identity directory (`weft identity init`).
        #[arg(long, env = "WEFT_IDENTITY_DIR")]
        dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token is valid.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        names: NameArgs,
    },
}

fn days(t: SystemTime) -> u64 {
    (t.duration_since(SystemTime::now()).unwrap_or_default().as_secs() + 43_200) / 86_400
}

#[derive(clap::Args, Clone)]
pub struct NameArgs {
    /// The identity trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The control plane's namespace, part of every identity name.
    #[arg(long, default_value = "weft")]
    pub control_plane_namespace: String,
}

impl NameArgs {
    pub fn names(&self) -> Names {
        Names {
            control_plane_ns: self.control_plane_namespace.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { dir, names } => {
            let names = names.names();
            let made = ca::init(&dir, &names, SystemTime::now())?;
            println!("weft identity: created in {}:", dir.display());
            println!(
                "  {}  trust anchor, valid {} days (give it to every proxy)",
                ca::ANCHOR_CERT,
                days(made.anchor_not_after)
            );
            println!("  {}  the anchor's key (keep it offline once issuers are made)", ca::ANCHOR_KEY);
            println!("  {}  issuer, valid {} days", ca::ISSUER_CERT, days(made.issuer_not_after));
            println!("  {}  the issuer's key", ca::ISSUER_KEY);
            println!("  {}  signs workload tokens (weft identity token)", ca::TOKEN_KEY);
            println!("next: weft controller --store DIR --identity-dir {}", dir.display());
            Ok(())
        }
        Command::RotateIssuer { dir, names } => {
            let not_after = ca::rotate_issuer(&dir, &names.names(), SystemTime::now())?;
            println!("weft identity: a new issuer in {}, valid {} days", dir.display(), days(not_after));
            Ok(())
        }
        Command::Token { dir, namespace, service_account, ttl, output, names } => {
            let path = dir.join(ca::TOKEN_KEY);
            let stored = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {} (run `weft identity init` first)", path.display()))?;
            let key =
                TokenKey::from_stored(&stored).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let names = names.names();
            let identity = names.workload(&namespace, &service_account);
            if names.parse(&identity).is_none() {
                anyhow::bail!(
                    "--namespace {namespace:?} --service-account {service_account:?}: each must be a DNS label (lowercase letters, digits, '-')"
                );
            }
            let token = key.issue(&namespace, &service_account, ttl, SystemTime::now());
            match output {
                None => println!("{token}"),
                Some(file) => {
                    use std::{io::Write, os::unix::fs::OpenOptionsExt};
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&file)
                        .with_context(|| format!("writing {}", file.display()))?;
                    writeln!(f, "{token}")?;
                    eprintln!("weft identity: a token for {identity} is in {}", file.display());
                }
            }
            Ok(())
        }
    }
}
