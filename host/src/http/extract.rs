//! What the handlers take from a request, with every refusal in the JSON
//! error format: bodies are JSON only (`Content-Type: application/json`,
//! else 415), bounded (413), without duplicate keys at any depth (400) and
//! of exactly the expected shape (400, naming the field); query strings and
//! path parameters that do not parse are 400s too.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

use super::error::ApiError;

/// Largest `POST /v1/spawns` body.
pub const MAX_START_BODY: usize = 1 << 20;
/// Largest job callback body.
pub const MAX_CALLBACK_BODY: usize = 4096;

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// matched case-insensitively (RFC 9110).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 415 unless the request says its body is JSON (`application/json`, any
/// parameters such as `charset=utf-8`).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON sent with Content-Type: application/json (got {})",
                if ct.is_empty() {
                    "no Content-Type".to_string()
                } else {
                    format!("{:?}", crate::sanitize::text(ct, 100))
                }
            ),
        ))
    }
}

/// The body, at most `limit` bytes (413 beyond).
pub async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {} KiB", limit / 1024),
        )
    };
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `bytes` as a `T`: JSON without duplicate keys, of exactly `T`'s shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!("the request body is not the expected JSON: {e}"))
    };
    let mut d = serde_json::Deserializer::from_slice(bytes);
    <NoDuplicateKeys as de::Deserialize>::deserialize(&mut d).map_err(bad)?;
    d.end().map_err(bad)?;
    serde_json::from_slice(bytes).map_err(bad)
}

/// A JSON value walked only to refuse an object with a key twice (serde
/// keeps the last one of a map silently).
struct NoDuplicateKeys;

impl<'de> de::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!(
                    "the key {:?} appears twice in one object",
                    crate::sanitize::text(&k, 100)
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// A query string as `T`; a refusal is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "the query string is refused: {}",
                crate::sanitize::reason(&e.body_text())
            ))),
        }
    }
}

/// Path parameters as `T`; a refusal is a JSON 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "the path is refused: {}",
                crate::sanitize::reason(&e.body_text())
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_json::<T>(br#"{"a": {"x": "1", "y": "2"}}"#).is_ok());
        for bad in [
            r#"{"a": {"x": "1", "x": "2"}}"#,
            r#"{"a": {}, "a": {}}"#,
            r#"{"a": {"\u0078": "1", "x": "2"}}"#,
        ] {
            let e = parse_json::<T>(bad.as_bytes()).unwrap_err();
            assert!(e.message.contains("appears twice"), "{bad}: {}", e.message);
        }
        let e = parse_json::<serde_json::Value>(br#"[{"k": 1, "k": 2}]"#).unwrap_err();
        assert!(e.message.contains("\"k\""), "{}", e.message);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        for v in ["Bearer tok", "bearer tok", "BEARER  tok ", "bEaReR\ttok"] {
            assert_eq!(bearer(&h(v)), Some("tok"), "{v}");
        }
        for v in ["Basic tok", "Bearer", "Bearer   ", "Bearertok", "tok"] {
            assert_eq!(bearer(&h(v)), None, "{v}");
        }
    }

    #[test]
    fn only_json_bodies() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            m
        };
        assert!(require_json(&h("application/json")).is_ok());
        assert!(require_json(&h("Application/JSON; charset=utf-8")).is_ok());
        for v in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
        ] {
            assert_eq!(require_json(&h(v)).unwrap_err().status, 415, "{v}");
        }
        assert_eq!(require_json(&HeaderMap::new()).unwrap_err().status, 415);
    }
}
