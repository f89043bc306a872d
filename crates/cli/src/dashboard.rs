//! `weft dashboard`: where the controller serves the dashboard, opened in
//! a browser (or only printed, `--show url`).

use anyhow::{Context, bail};
use std::net::SocketAddr;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// The controller's admin address, where it serves the dashboard.
    #[arg(long, env = "WEFT_CONTROLLER_ADMIN", default_value = "127.0.0.1:9990")]
    admin: SocketAddr,
    /// `browser`: open it (xdg-open, or open on macOS); `url`: only print
    /// where it is.
    #[arg(long, default_value = "browser", value_parser = ["browser", "url"])]
    show: String,
}

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, page) = runtime.block_on(crate::http_get(args.admin, "/")).with_context(|| {
        format!(
            "the controller's admin server at {} did not answer: is `weft controller` (or `weft demo`) running? \
             (--admin or WEFT_CONTROLLER_ADMIN point elsewhere)",
            args.admin
        )
    })?;
    if status != 200 || !page.contains("weft dashboard") {
        bail!("{} answered {status} without the dashboard: is it weft's controller?", args.admin);
    }
    let url = format!("http://{}/", args.admin);
    println!("weft dashboard available at:\n{url}");
    if args.show == "browser" {
        let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
        let opened = std::process::Command::new(opener)
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|s| s.success()) {
            eprintln!("(could not open a browser with {opener}: open the address above yourself)");
        }
    }
    Ok(())
}
