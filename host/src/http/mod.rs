//! The HTTP API the hub calls, versioned under `/v1`. `GET /healthz` and the
//! job callback (`POST /v1/spawns/{id}/ready`, which has its own per-spawn
//! token) are the only routes without `Authorization: Bearer <token>`;
//! tokens are compared in constant time. Errors are JSON:
//! `{"error": "<stable code>", "message": "<for a person>"}`.
//!
//! The routes are one table ([`routes`]); the router is built from it and the
//! OpenAPI document (`openapi.json`, served at `/v1/openapi.json`) is tested
//! against it.

pub mod auth;
pub mod callback_only;
pub mod error;
pub mod extract;
pub mod form_html;
pub mod plugins;
pub mod prometheus;
pub mod spawn_view;
pub mod spawns;

use std::sync::Arc;

use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use crate::registry::Registry;
use crate::service::Service;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler can reach.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub token: auth::Token,
    pub service: Arc<Service>,
}

/// One route: method, path (as in the OpenAPI document), whether it needs
/// the API token, and its handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub api_token: bool,
    pub handler: MethodRouter<Arc<AppState>>,
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    let r = |method, path, api_token, handler| Route {
        method,
        path,
        api_token,
        handler,
    };
    vec![
        r("get", "/healthz", false, get(|| async { "ok\n" })),
        r("get", "/v1/openapi.json", true, get(openapi)),
        r("get", "/v1/plugins", true, get(plugins::list)),
        r(
            "get",
            "/v1/plugins/{instance}/form",
            true,
            get(plugins::form),
        ),
        r("get", "/v1/metrics", true, get(spawns::metrics)),
        r("post", "/v1/spawns", true, post(spawns::start)),
        r("get", "/v1/spawns", true, get(spawns::list)),
        r("get", "/v1/spawns/{id}", true, get(spawns::get)),
        r("delete", "/v1/spawns/{id}", true, delete(spawns::stop)),
        r("get", "/v1/spawns/{id}/events", true, get(spawns::events)),
        r("post", "/v1/spawns/{id}/ready", false, post(spawns::ready)),
    ]
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// The API: the routes of [`routes`]; in front of them the API token check
/// for everything under `/v1` but the callback ([`auth::needs_token`],
/// unknown routes included), and around all of it [`error::json_errors`].
pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new();
    for route in routes() {
        debug_assert_eq!(route.api_token, auth::needs_token(route.path));
        app = app.route(route.path, route.handler);
    }
    app.fallback(|| async { error::ApiError::not_found("no such route; see GET /v1/openapi.json") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state)
}
