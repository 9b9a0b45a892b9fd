//! `wasmspawner serve`: load the plugins, open the spawn service (recovering
//! every stored spawn), start one poller per instance, serve the HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::http::{self, auth::Token, AppState};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::service::Service;

pub async fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let token = Token::load(&config.http, &config.path)?;
    let runtime = Runtime::for_config(&config)?;
    runtime.own_ssh_connections();
    let listen = config.http.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (http.listen)"))?;
    let local = listener.local_addr()?;
    let public_url = match &config.http.public_url {
        Some(u) => u.clone(),
        None => {
            if local.ip().is_unspecified() {
                tracing::warn!(
                    "http.listen is {local} and http.public_url is not set: jobs are told to call back to {local}, which only works on this machine; set http.public_url"
                );
            }
            format!("http://{local}")
        }
    };
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
    let service = Service::open(registry.clone(), &public_url)?;
    let _pollers = service.start_pollers();
    let state = Arc::new(AppState {
        registry: registry.clone(),
        token,
        service: service.clone(),
    });
    // Callback tunnels forward to a listener that serves the job callback
    // only: the gateway's port exposes nothing else of the API.
    let has_callback_tunnel = registry
        .config
        .instances
        .values()
        .any(|i| i.tunnel.as_ref().is_some_and(|t| t.callback.is_some()));
    let (callbacks_at, _callbacks) = if has_callback_tunnel {
        let (addr, task) = http::callback_only::serve(state.clone())
            .await
            .context("cannot open the callback-only listener on 127.0.0.1")?;
        tracing::info!("callback tunnels forward to http://{addr} (the job callback only)");
        (addr, Some(task))
    } else {
        (local, None)
    };
    let _tunnels = service.start_tunnel_keeper(callbacks_at);
    let app = http::router(state);
    tracing::info!("listening on http://{local} (callbacks to {public_url})");
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown().await;
        let _ = stopping_tx.send(());
    });
    // Event streams of spawns still in the queue never end by themselves:
    // give open connections a moment, then exit anyway (all state is on disk).
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r?,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::info!(
            "connections still open {} s after the shutdown signal (event streams); exiting",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    let left = service.drain(SUBMIT_GRACE).await;
    if left > 0 {
        tracing::warn!(
            "{left} job submits still running {} s after the shutdown signal; those spawns fail at the next start (never submitted twice)",
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
