//! Bearer-token authentication.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::HttpConfig;

/// The API token. Its value is never logged or printed.
#[derive(Clone)]
pub struct Token(Arc<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// From `http.token_file`, else the `http.token_env` variable. A token
    /// file readable by other users is refused.
    pub fn load(http: &HttpConfig, config_file: &Path) -> Result<Token> {
        let value = if let Some(path) = &http.token_file {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).with_context(|| {
                format!(
                    "{}: http.token_file {} cannot be read",
                    config_file.display(),
                    path.display()
                )
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                bail!(
                    "{}: http.token_file {} is readable by other users; run chmod 600 on it",
                    config_file.display(),
                    path.display()
                );
            }
            std::fs::read_to_string(path)?.trim().to_string()
        } else {
            std::env::var(&http.token_env)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        if value.len() < 16 {
            bail!(
                "{}: no API token of at least 16 characters: set http.token_file (e.g. made with `openssl rand -hex 32 > token; chmod 600 token`) or the {} environment variable",
                config_file.display(),
                http.token_env
            );
        }
        Ok(Token(Arc::new(value.into_bytes())))
    }

    pub fn from_value(v: &str) -> Token {
        Token(Arc::new(v.as_bytes().to_vec()))
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_slice().ct_eq(presented).into()
    }
}

/// Whether `path` needs the API token: everything under `/v1` but the job
/// callback (`/v1/spawns/{id}/ready`, which has its own token), routed or
/// not, so that an unknown route reveals nothing before the token.
pub fn needs_token(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1") else {
        return false;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return false;
    }
    let segs: Vec<&str> = rest.split('/').collect();
    !matches!(segs.as_slice(), ["", "spawns", id, "ready"] if !id.is_empty())
}

/// In front of the whole router: a request that needs the API token
/// ([`needs_token`]) without it gets 401 before anything else.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !needs_token(req.uri().path()) {
        return Ok(next.run(req).await);
    }
    match super::extract::bearer(req.headers()) {
        Some(t) if state.token.matches(t.as_bytes()) => Ok(next.run(req).await),
        _ => Err(ApiError::unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn everything_under_v1_but_the_callback_needs_the_token() {
        for p in [
            "/v1",
            "/v1/",
            "/v1/spawns",
            "/v1/nope",
            "/v1/spawns/x",
            "/v1/spawns/x/events",
            "/v1/spawns//ready",
            "/v1/spawns/x/ready/more",
        ] {
            assert!(super::needs_token(p), "{p}");
        }
        for p in [
            "/healthz",
            "/",
            "/v1x",
            "/v10/spawns",
            "/v1/spawns/sp-1/ready",
        ] {
            assert!(!super::needs_token(p), "{p}");
        }
    }
}
