//! `/v1/spawns`: start, look at, list, stop, follow a spawn; and the job's
//! callback `POST /v1/spawns/{id}/ready` (authenticated by the per-spawn
//! token, not the API token).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{
    bearer, parse_json, read_body, require_json, ApiPath, ApiQuery, MAX_CALLBACK_BODY,
    MAX_START_BODY,
};
use super::spawn_view::SpawnView;
use super::AppState;
use crate::model::SpawnState;
use crate::service::{CallbackBody, ListCursor, ListFilter, ServiceError, StartRequest};

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
            ServiceError::Unavailable {
                code, retry_after, ..
            } => {
                let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, msg);
                a.retry_after = Some(retry_after);
                a
            }
            ServiceError::Internal(_) => {
                tracing::error!("internal error: {msg}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

/// `POST /v1/spawns` → 201 (new), 200 (same request again), 409, 422.
/// The body is JSON (415 otherwise), at most [`MAX_START_BODY`] (413).
pub async fn start(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    require_json(req.headers())?;
    let body = read_body(req.into_body(), MAX_START_BODY).await?;
    let req: StartRequest = parse_json(&body)?;
    let (spawn, created) = state.service.start(req).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(SpawnView::from(spawn))).into_response())
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SpawnView>, ApiError> {
    Ok(Json(SpawnView::from(state.service.get(&id)?)))
}

/// The query of `GET /v1/spawns`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub user: Option<String>,
    pub state: Option<String>,
    /// RFC 3339: only spawns changed at or after this time.
    pub since: Option<String>,
    /// At most this many (default [`LIST_DEFAULT_LIMIT`], at most
    /// [`LIST_MAX_LIMIT`]).
    pub limit: Option<String>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of `GET /v1/spawns` without `limit`.
pub const LIST_DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const LIST_MAX_LIMIT: usize = 1000;
/// The response header with the cursor of the next page (absent on the last).
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// `GET /v1/spawns[?user=&state=&since=&limit=&cursor=]`: oldest first, a
/// page at a time; `X-Next-Cursor` carries the cursor of the next page.
pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let want = match q.state.as_deref() {
        None => None,
        Some(s) => Some(SpawnState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {:?} is not one of validating, submitting, queued, running, ready, stopping, stopped, failed",
                crate::sanitize::text(s, 64)
            ))
        })?),
    };
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "since: {:?} is not an RFC 3339 time such as 2026-12-01T10:00:00Z",
                        crate::sanitize::text(s, 64)
                    ))
                })?
                .with_timezone(&chrono::Utc),
        ),
    };
    let limit = match q.limit.as_deref() {
        None => LIST_DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit: {:?} is not a number from 1 to {LIST_MAX_LIMIT}",
                    crate::sanitize::text(l, 64)
                )))
            }
        },
    };
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(ListCursor::decode(c).ok_or_else(|| {
            ApiError::bad_request(
                "cursor: not a cursor this host gave (use the X-Next-Cursor header of the previous page)",
            )
        })?),
    };
    let (page, next) = state.service.list_page(&ListFilter {
        user: q.user,
        state: want,
        since,
        after,
        limit,
    });
    let page: Vec<SpawnView> = page.into_iter().map(SpawnView::from).collect();
    let mut r = Json(page).into_response();
    if let Some(n) = next {
        if let Ok(v) = axum::http::HeaderValue::from_str(&n.encode()) {
            r.headers_mut().insert(NEXT_CURSOR, v);
        }
    }
    Ok(r)
}

/// The query of `DELETE /v1/spawns/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    /// `true`: forget an ended (stopped or failed) spawn now.
    pub purge: Option<String>,
}

/// `DELETE /v1/spawns/{id}` → 202 while stopping, 200 when already ended;
/// with `?purge=true` → 204 (the ended spawn's record and events are gone),
/// 409 `spawn_active` while it has not ended.
pub async fn stop(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StopQuery>,
) -> Result<Response, ApiError> {
    let purge = match q.purge.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "purge: {:?} is neither true nor false",
                crate::sanitize::text(v, 64)
            )))
        }
    };
    if purge {
        state.service.purge(&id)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let spawn = state.service.stop(&id).await?;
    let code = if spawn.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(SpawnView::from(spawn))).into_response())
}

/// `GET /v1/spawns/{id}/events`: Server-Sent Events, each `data:` a
/// [`crate::model::SpawnEvent`]; the event name is the state for the final
/// event (`ready`, `failed`, `stopped`), else `progress`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
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
/// The token is checked first (401), then that the body is JSON (415), at
/// most [`MAX_CALLBACK_BODY`] (413), of the callback's shape (422).
/// 200: ready (the server accepts connections); 202: the port is taken,
/// the host checks until the server listens.
pub async fn ready(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = bearer(req.headers()).map(str::to_string);
    if !token
        .as_deref()
        .is_some_and(|t| state.service.callback_token_ok(&id, t))
    {
        return Err(ServiceError::bad_callback_token().into());
    }
    require_json(req.headers())?;
    let body = read_body(req.into_body(), MAX_CALLBACK_BODY).await?;
    let body: CallbackBody = parse_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_callback",
            format!(
                "the body must be {{\"port\": N, \"host\": \"optional\"}} and nothing else: {}",
                e.message
            ),
        )
    })?;
    let spawn = state
        .service
        .callback(&id, token.as_deref(), &body, peer)
        .await?;
    let code = if spawn.state == SpawnState::Ready {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(SpawnView::from(spawn))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// `json` (default) or `prometheus` (the text exposition format).
    #[serde(default)]
    pub format: Option<String>,
}

/// `GET /v1/metrics[?format=prometheus]`.
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
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
