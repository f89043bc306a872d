//! The weft-proxy binary: configuration from the environment, logs to
//! stderr, and a clean exit (0) after draining on SIGTERM.

use std::process::ExitCode;
use weft_proxy::{Config, Proxy, config::LogFormat};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("weft-proxy: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let unread = Config::unread(&std::env::vars().collect::<Vec<_>>());
    if !unread.is_empty() {
        tracing::info!(variables = %unread.join(" "), "set, and not used by weft-proxy");
    }

    let runtime = if config.cores == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.cores)
            .thread_name("weft-proxy")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("weft-proxy: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    runtime.block_on(async move {
        // Signal handlers go in before the listeners open, so a SIGTERM that
        // arrives as soon as the proxy says it is listening still drains.
        let shutdown = shutdown_signal();
        let proxy = match Proxy::bind(config).await {
            Ok(proxy) => proxy,
            Err(error) => {
                tracing::error!(%error, "weft-proxy cannot start");
                eprintln!("weft-proxy: {error}");
                return ExitCode::FAILURE;
            }
        };
        proxy.run(shutdown).await;
        tracing::info!("weft-proxy stopped");
        ExitCode::SUCCESS
    })
}

/// Registers for SIGTERM and SIGINT at once; the future resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::warn!("cannot listen for signals; the proxy will only stop through /shutdown");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|error| {
        eprintln!(
            "weft-proxy: LINKERD2_PROXY_LOG={:?} is not a valid filter ({error}); using warn",
            config.log
        );
        tracing_subscriber::EnvFilter::new("warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
