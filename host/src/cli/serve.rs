//! `wasmspawner serve`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::http::{self, auth::Token, AppState};
use crate::registry::Registry;
use crate::runtime::Runtime;

pub async fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let token = Token::load(&config.http, &config.path)?;
    let runtime = Runtime::new(&config.state_dir)?;
    let listen = config.http.listen.clone();
    let registry = Arc::new(Registry::load(runtime, config).await?);
    for i in registry.instances() {
        let l = i.current();
        tracing::info!(
            instance = i.name(),
            "loaded plugin {} {} (sha256 {}) from {}",
            l.descriptor.name,
            l.descriptor.version,
            l.digest,
            l.path.display()
        );
    }
    let _watch = registry.watch()?;
    let app = http::router(Arc::new(AppState { registry, token }));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (http.listen)"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
