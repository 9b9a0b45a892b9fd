//! `/v1/spawns`: start, look at, list, stop, follow a spawn; and the job's
//! callback `POST /v1/spawns/{id}/ready` (authenticated by the per-spawn
//! token, not the API token).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::model::{Spawn, SpawnState};
use crate::service::{CallbackBody, ServiceError, StartRequest};

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let msg = e.to_string();
        match e {
            ServiceError::BadRequest(_) => ApiError::bad_request(msg),
            ServiceError::UnknownInstance(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_instance", msg)
            }
            ServiceError::NotFound(_) => ApiError::not_found(msg),
            ServiceError::InvalidOptions(fields) => {
                let mut a = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_options", msg);
                a.fields = Some(fields);
                a
            }
            ServiceError::Conflict { code, spawn_id, .. } => {
                let mut a = ApiError::new(StatusCode::CONFLICT, code, msg);
                a.spawn_id = Some(spawn_id);
                a
            }
            ServiceError::Plugin(c) => c.into(),
            ServiceError::Callback { status, code, .. } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                code,
                msg,
            ),
            ServiceError::Internal(_) => {
                tracing::error!("internal error: {msg}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not the expected JSON: {e}"))
    })
}

/// `POST /v1/spawns` → 201 (new), 200 (same request again), 409, 422.
pub async fn start(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: StartRequest = json_body(&body)?;
    let (spawn, created) = state.service.start(req).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(spawn)).into_response())
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Spawn>, ApiError> {
    Ok(Json(state.service.get(&id)?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    pub user: Option<String>,
    pub state: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Spawn>>, ApiError> {
    let want = match q.state.as_deref() {
        None => None,
        Some(s) => Some(SpawnState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {s:?} is not one of validating, submitting, queued, running, ready, stopping, stopped, failed"
            ))
        })?),
    };
    let mut v = state.service.list(q.user.as_deref());
    if let Some(w) = want {
        v.retain(|s| s.state == w);
    }
    Ok(Json(v))
}

/// `DELETE /v1/spawns/{id}` → 202 while stopping, 200 when already ended.
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let spawn = state.service.stop(&id).await?;
    let code = if spawn.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(spawn)).into_response())
}

/// `GET /v1/spawns/{id}/events`: Server-Sent Events, each `data:` a
/// [`crate::model::SpawnEvent`]; the event name is the state for the final
/// event (`ready`, `failed`, `stopped`), else `progress`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.service.get(&id)?;
    let stream = crate::service::events::stream(state.service.clone(), id)
        .map_err(ServiceError::Internal)?
        .map(|e| {
            let name = if e.is_final {
                e.state.as_str()
            } else {
                "progress"
            };
            Ok::<_, Infallible>(
                Event::default()
                    .event(name)
                    .id(e.seq.to_string())
                    .json_data(&e)
                    .unwrap_or_default(),
            )
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `POST /v1/spawns/{id}/ready` with `Authorization: Bearer <callback token>`.
pub async fn ready(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Spawn>, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let body = axum::body::to_bytes(req.into_body(), 4096)
        .await
        .map_err(|_| ApiError::bad_request("the callback body is larger than 4 KiB"))?;
    let body: CallbackBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_callback",
            format!(
                "the body must be {{\"port\": N, \"host\": \"optional\"}} and nothing else: {e}"
            ),
        )
    })?;
    Ok(Json(
        state
            .service
            .callback(&id, token.as_deref(), &body, peer)
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct MetricsQuery {
    /// `json` (default) or `prometheus` (the text exposition format).
    #[serde(default)]
    pub format: Option<String>,
}

/// `GET /v1/metrics[?format=prometheus]`.
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    Query(q): Query<MetricsQuery>,
) -> Result<Response, ApiError> {
    let metrics = state.service.metrics();
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(metrics).into_response()),
        Some("prometheus") => {
            let health: Vec<_> = state
                .registry
                .instances()
                .map(|i| (i.name().to_string(), i.health()))
                .collect();
            Ok((
                [(
                    axum::http::header::CONTENT_TYPE,
                    super::prometheus::CONTENT_TYPE,
                )],
                super::prometheus::render(&metrics, &health),
            )
                .into_response())
        }
        Some(f) => Err(ApiError::bad_request(format!(
            "format: {f:?} is neither \"json\" nor \"prometheus\""
        ))),
    }
}
