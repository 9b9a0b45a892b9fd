//! The HTTP API the hub calls, versioned under `/v1`. `GET /healthz` is the
//! only unauthenticated route; everything else needs
//! `Authorization: Bearer <token>`, compared in constant time. Errors are
//! JSON: `{"error": "<stable code>", "message": "<for a person>"}`.

pub mod auth;
pub mod error;
pub mod plugins;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::registry::Registry;

/// What every handler can reach.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub token: auth::Token,
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/plugins", get(plugins::list))
        .route("/plugins/{instance}/form", get(plugins::form))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/v1", v1)
        .with_state(state)
}
