//! `wasmspawner serve`: the host as a daemon ([`crate::daemon::Daemon`]),
//! until SIGTERM or Ctrl-C.

use std::path::Path;

use anyhow::Result;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::http::auth::Token;

pub async fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let token = Token::load(&config.http, &config.path)?;
    let daemon = Daemon::bind_and_start(config, token).await?;
    shutdown().await;
    let left = daemon.shutdown(SHUTDOWN_GRACE, SUBMIT_GRACE).await?;
    if left > 0 {
        tracing::warn!(
            "{left} job submits still running {} s after the shutdown signal; those spawns are resolved at the next start (never submitted twice)",
            SUBMIT_GRACE.as_secs()
        );
    }
    Ok(())
}

/// How long job submits in flight may finish at shutdown.
const SUBMIT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long open connections may finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
