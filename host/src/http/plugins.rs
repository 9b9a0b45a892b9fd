//! `GET /v1/plugins` and `GET /v1/plugins/{instance}/form`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::AppState;
use crate::model::{FormSchema, User};
use crate::runtime::plugin::HealthReport;

#[derive(Serialize)]
pub struct PluginInfo {
    pub instance: String,
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub description: String,
    pub digest: String,
    pub path: String,
    pub loaded_at: String,
    pub health: HealthReport,
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Vec<PluginInfo>> {
    Json(
        state
            .registry
            .instances()
            .map(|i| {
                let l = i.current();
                PluginInfo {
                    instance: i.name().to_string(),
                    name: l.descriptor.name.clone(),
                    version: l.descriptor.version.clone(),
                    api_version: l.descriptor.api_version.clone(),
                    description: l.descriptor.description.clone(),
                    digest: l.digest.clone(),
                    path: l.path.display().to_string(),
                    loaded_at: l.loaded_at.to_rfc3339(),
                    health: i.health(),
                }
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormQuery {
    pub user: String,
    /// Comma-separated.
    #[serde(default)]
    pub groups: String,
    #[serde(default)]
    pub admin: bool,
    /// `json` (the typed schema, default) or `html` (a form fragment).
    #[serde(default)]
    pub format: Option<String>,
}

pub async fn form(
    State(state): State<Arc<AppState>>,
    ApiPath(instance): ApiPath<String>,
    ApiQuery(q): ApiQuery<FormQuery>,
) -> Result<Response, ApiError> {
    let inst = state
        .registry
        .get(&instance)
        .ok_or_else(|| ApiError::not_found(format!("no plugin instance {instance:?}")))?;
    let user = User {
        name: q.user,
        groups: q
            .groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        admin: q.admin,
    };
    user.check().map_err(ApiError::bad_request)?;
    let html = match q.format.as_deref() {
        None | Some("json") => false,
        Some("html") => true,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format: {f:?} is neither \"json\" nor \"html\""
            )))
        }
    };
    let schema: FormSchema = inst.form(&user).await?;
    Ok(if html {
        (
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            super::form_html::render(&schema),
        )
            .into_response()
    } else {
        Json(schema).into_response()
    })
}
