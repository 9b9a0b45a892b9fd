//! The OpenAPI document (`/v1/openapi.json`) stays true: it has exactly the
//! router's routes, the right ones are unauthenticated, and every status a
//! test run sees is documented for its route.

mod common;
mod service_common;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use service_common::*;
use wasmspawner_host::http::{routes, OPENAPI};

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

#[test]
fn the_document_has_exactly_the_routes_of_the_router() {
    let d = doc();
    let mut documented = BTreeSet::new();
    for (path, ops) in d["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            // Operations without the API token say so with their own security.
            let open = op
                .get("security")
                .is_some_and(|s| s != &json!([{"apiToken": []}]));
            let route = routes()
                .into_iter()
                .find(|r| r.method == method && r.path == path)
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            assert_eq!(open, !route.api_token, "{method} {path}: security differs");
        }
    }
    let routed: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // Every $ref resolves.
    let text = OPENAPI;
    for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            d["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
}

/// The documented operation for a concrete request.
fn operation<'a>(d: &'a Value, method: &str, path: &str) -> &'a Value {
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    for (template, ops) in d["paths"].as_object().unwrap() {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
        {
            if let Some(op) = ops.get(method.to_ascii_lowercase()) {
                return op;
            }
        }
    }
    panic!("{method} {path} matches no documented operation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_seen_in_a_test_run_is_documented() {
    let h = start_host(&local_config("")).await;
    let d = doc();
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let mut seen: Vec<(String, String, u16)> = Vec::new();
    let mut call = |m: &str, p: &str, r: &Resp| seen.push((m.to_string(), p.to_string(), r.status));

    let good = start_body("alice", "", "r1", &["python3", &script, &never]);
    let mut steps: Vec<(&str, String, Option<&str>, Option<Value>)> = vec![
        ("GET", "/healthz".into(), None, None),
        ("GET", "/v1/openapi.json".into(), Some(TOKEN), None),
        ("GET", "/v1/openapi.json".into(), None, None),
        ("GET", "/v1/plugins".into(), Some(TOKEN), None),
        (
            "GET",
            "/v1/plugins/local/form?user=alice".into(),
            Some(TOKEN),
            None,
        ),
        (
            "GET",
            "/v1/plugins/local/form?user=alice&format=html".into(),
            Some(TOKEN),
            None,
        ),
        (
            "GET",
            "/v1/plugins/local/form?user=Bad!".into(),
            Some(TOKEN),
            None,
        ),
        (
            "GET",
            "/v1/plugins/nope/form?user=alice".into(),
            Some(TOKEN),
            None,
        ),
        ("GET", "/v1/metrics".into(), Some(TOKEN), None),
        (
            "GET",
            "/v1/metrics?format=prometheus".into(),
            Some(TOKEN),
            None,
        ),
        ("GET", "/v1/metrics?format=xml".into(), Some(TOKEN), None),
        ("POST", "/v1/spawns".into(), Some(TOKEN), Some(good.clone())),
        ("POST", "/v1/spawns".into(), Some(TOKEN), Some(good.clone())),
        (
            "POST",
            "/v1/spawns".into(),
            Some(TOKEN),
            Some(json!({"user": {"name": "alice"}})),
        ),
        (
            "POST",
            "/v1/spawns".into(),
            Some(TOKEN),
            Some({
                let mut b = good.clone();
                b["instance"] = json!("nope");
                b["request_id"] = json!("r9");
                b
            }),
        ),
        (
            "POST",
            "/v1/spawns".into(),
            Some(TOKEN),
            Some({
                let mut b = good.clone();
                b["request_id"] = json!("r2");
                b
            }),
        ),
        (
            "POST",
            "/v1/spawns".into(),
            Some(TOKEN),
            Some({
                let mut b = good.clone();
                b["server_name"] = json!("x");
                b["options"] = json!({"interface": ["emacs"]});
                b
            }),
        ),
        ("GET", "/v1/spawns?user=alice".into(), Some(TOKEN), None),
        ("GET", "/v1/spawns?state=bogus".into(), Some(TOKEN), None),
        ("GET", "/v1/spawns/sp-none".into(), Some(TOKEN), None),
        ("DELETE", "/v1/spawns/sp-none".into(), Some(TOKEN), None),
        ("GET", "/v1/spawns/sp-none/events".into(), Some(TOKEN), None),
        (
            "POST",
            "/v1/spawns/sp-none/ready".into(),
            Some("x"),
            Some(json!({"port": 1})),
        ),
        (
            "POST",
            "/v1/spawns/sp-none/ready".into(),
            None,
            Some(json!({"port": 0})),
        ),
    ];
    for (m, p, t, b) in steps.drain(..) {
        let r = request(m, &format!("{}{p}", h.url), t, b.as_ref()).await;
        call(m, &p, &r);
    }
    let id = h.service.list(Some("alice"))[0].id.clone();
    let s = h.wait_spawn(&id, 20, |s| s["state"] == "running").await;
    let tok = env_of(
        pid_of(s["job_id"].as_str().unwrap()),
        "WASMSPAWNER_CALLBACK_TOKEN",
    )
    .unwrap();
    let ready = format!("/v1/spawns/{id}/ready");
    for (t, body) in [
        (tok.as_str(), json!({"port": 8000, "host": "10.0.0.1"})),
        (tok.as_str(), json!({"port": 8000})),
        (tok.as_str(), json!({"port": 8000})),
    ] {
        let r = request("POST", &format!("{}{ready}", h.url), Some(t), Some(&body)).await;
        call("POST", &ready, &r);
    }
    for (m, p) in [
        ("GET", format!("/v1/spawns/{id}")),
        ("DELETE", format!("/v1/spawns/{id}")),
    ] {
        let r = h.api(m, &p, None).await;
        call(m, &p, &r);
    }
    h.wait_spawn(&id, 20, |s| s["state"] == "stopped").await;
    let p = format!("/v1/spawns/{id}");
    let r = h.api("DELETE", &p, None).await;
    call("DELETE", &p, &r);
    let events = read_events(
        &format!("{}/v1/spawns/{id}/events", h.url),
        &["stopped"],
        10,
    )
    .await;
    assert_eq!(events.last().unwrap().0, "stopped");
    seen.push(("GET".into(), format!("/v1/spawns/{id}/events"), 200));

    let mut statuses = BTreeSet::new();
    for (m, p, status) in &seen {
        let op = operation(&d, m, p);
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{m} {p} answered {status}, which the document does not list"
        );
        statuses.insert(*status);
    }
    // The run went through the interesting outcomes, and every route.
    for s in [200, 201, 202, 400, 401, 403, 404, 409, 422] {
        assert!(statuses.contains(&s), "no request answered {s}: {seen:?}");
    }
    let exercised: BTreeSet<(String, String)> = seen
        .iter()
        .map(|(m, p, _)| {
            let op = operation(&d, m, p);
            (
                m.to_ascii_lowercase(),
                op["operationId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let all_ops: usize = d["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o.as_object().unwrap().len())
        .sum();
    assert_eq!(
        exercised.len(),
        all_ops,
        "not every route was exercised: {exercised:?}"
    );
}
