//! The listener a callback tunnel forwards to: it serves the job callback
//! (`POST /v1/spawns/{id}/ready`) and nothing else, so the gateway's port,
//! which every job (and anyone on the cluster) can reach, exposes no other
//! route of the API. It listens on 127.0.0.1 only, on a port of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::post;
use axum::Router;

use super::{error, spawns, AppState};

/// The job callback alone; every other path is a 404.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/spawns/{id}/ready", post(spawns::ready))
        .fallback(|| async {
            error::ApiError::not_found(
                "this port serves only the job callback (POST /v1/spawns/{id}/ready)",
            )
        })
        .with_state(state)
}

/// Serves [`router`] on a new 127.0.0.1 port; returns its address and the
/// server task (aborted to stop it).
pub async fn serve(
    state: Arc<AppState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!("the callback-only listener {addr} failed: {e}");
        }
    });
    Ok((addr, task))
}
