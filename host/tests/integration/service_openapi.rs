//! The OpenAPI document (`/v1/openapi.json`) stays true: it has exactly the
//! router's routes, the right ones are unauthenticated, and every status a
//! test run sees is documented for its route.

use crate::service_common;

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
    let mut call = |m: &str, p: &str, r: &Resp| {
        if r.status >= 400 {
            assert!(
                r.json()["error"].is_string(),
                "{m} {p}: {} without a JSON error: {}",
                r.status,
                r.body
            );
        }
        seen.push((m.to_string(), p.to_string(), r.status))
    };

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
    // Ready means listening: the reported port has a listener.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    for (t, body) in [
        (tok.as_str(), json!({"port": port, "host": "10.0.0.1"})),
        (tok.as_str(), json!({"port": port})),
        (tok.as_str(), json!({"port": port})),
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
    // The replay tells the current state: the old `ready` is progress now.
    let ready_ev = events
        .iter()
        .find(|(_, e)| e["state"] == "ready")
        .expect("the replay has the ready event");
    assert_eq!(ready_ev.0, "progress", "{events:?}");
    assert_eq!(ready_ev.1["final"], false, "{events:?}");
    assert_eq!(
        events.iter().filter(|(_, e)| e["final"] == true).count(),
        1,
        "only the last event is final: {events:?}"
    );
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

/// What a hub author can rely on: every refusal is a JSON error with a
/// stable code, whatever refused it (the router, an extractor, a handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_json_error_with_a_stable_code() {
    let h = start_host(&local_config("")).await;
    let url = |p: &str| format!("{}{p}", h.url);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let json_ct = "Content-Type: application/json";
    let code = |r: &Resp| r.json()["error"].as_str().unwrap_or("").to_string();

    // Unauthenticated under /v1: 401 before anything else, unknown routes too.
    for p in ["/v1/nope", "/v1/spawns", "/v1", "/v1/spawns/x/events/y"] {
        let r = raw_request("GET", &url(p), &[], b"").await;
        assert_eq!((r.status, code(&r).as_str()), (401, "unauthorized"), "{p}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"wasmspawner\""),
            "{p}"
        );
    }
    let r = raw_request(
        "PUT",
        &url("/v1/spawns"),
        &["Authorization: Bearer wrong-token"],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    // The scheme in any case.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = raw_request(
            "GET",
            &url("/v1/plugins"),
            &[&format!("Authorization: {scheme} {TOKEN}")],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    // With the token: 404 and 405 as JSON.
    let r = raw_request("GET", &url("/v1/nope"), &[&auth], b"").await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = raw_request("GET", &url("/nope"), &[], b"").await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = raw_request("PUT", &url("/v1/spawns"), &[&auth], b"").await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (405, "method_not_allowed"),
        "{}",
        r.body
    );
    assert!(
        r.header("allow").is_some_and(|a| a.contains("POST")),
        "{}",
        r.headers
    );
    let r = raw_request("GET", &url("/v1/spawns/x/ready"), &[], b"").await;
    assert_eq!((r.status, code(&r).as_str()), (405, "method_not_allowed"));

    let script = server_script(h.setup.dir.path());
    let good = start_body("alice", "", "r1", &["python3", &script]);
    // JSON only.
    let body = good.to_string();
    let r = raw_request(
        "POST",
        &url("/v1/spawns"),
        &[&auth, "Content-Type: text/plain"],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (415, "unsupported_media_type")
    );
    let r = raw_request("POST", &url("/v1/spawns"), &[&auth], body.as_bytes()).await;
    assert_eq!(r.status, 415);
    // Too large: 413.
    let big = vec![b' '; (1 << 20) + 10];
    let r = raw_request("POST", &url("/v1/spawns"), &[&auth, json_ct], &big).await;
    assert_eq!((r.status, code(&r).as_str()), (413, "payload_too_large"));
    // Unknown fields at every level, duplicate keys.
    let mut b = good.clone();
    b["user"]["uid"] = json!(0);
    let r = h.api("POST", "/v1/spawns", Some(&b)).await;
    assert_eq!((r.status, code(&r).as_str()), (400, "bad_request"));
    assert!(r.body.contains("uid"), "{}", r.body);
    let dup = body.replacen(
        "\"options\":{",
        "\"options\":{\"interface\":[\"notebook\"],",
        1,
    );
    assert_ne!(dup, body);
    let r = raw_request(
        "POST",
        &url("/v1/spawns"),
        &[&auth, json_ct],
        dup.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("appears twice"), "{}", r.body);
    // Env bounds, named in the error, before anything runs.
    let mut b = good.clone();
    b["env"]["BIG"] = json!("x".repeat(40 * 1024));
    let r = h.api("POST", "/v1/spawns", Some(&b)).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("BIG") && r.body.contains("32 KiB"),
        "{}",
        r.body
    );
    let mut b = good.clone();
    for i in 0..10 {
        b["env"][format!("V{i}")] = json!("y".repeat(30 * 1024));
    }
    let r = h.api("POST", "/v1/spawns", Some(&b)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("256 KiB"), "{}", r.body);
    assert!(
        h.service.list(None).is_empty(),
        "a refused request left a spawn"
    );
    // Query strings: a bad value, a repeated parameter, an unknown one.
    for q in [
        "limit=0",
        "limit=x",
        "user=a&user=b",
        "usr=alice",
        "since=yesterday",
        "cursor=zz",
    ] {
        let r = h.api("GET", &format!("/v1/spawns?{q}"), None).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "bad_request"),
            "{q}: {}",
            r.body
        );
    }
    let r = h
        .api("GET", "/v1/plugins/local/form?user=alice&admin=maybe", None)
        .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "bad_request"),
        "{}",
        r.body
    );
    // A callback without a token is refused for that, not for its body.
    let r = raw_request(
        "POST",
        &url("/v1/spawns/sp-x/ready"),
        &[json_ct],
        b"garbage",
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (401, "invalid_callback_token"),
        "{}",
        r.body
    );
    assert!(r.header("www-authenticate").is_some());
    let r = raw_request(
        "POST",
        &url("/v1/spawns/sp-x/ready"),
        &["Authorization: bearer nope"],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
}

/// `GET /v1/spawns` a page at a time with filters; purge and retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_are_listed_by_pages_and_ended_ones_are_forgotten() {
    let h = start_host(&local_config("")).await;
    // A program the instance may not run: each spawn fails at submit.
    let mut ids = Vec::new();
    for i in 0..5 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let b = start_body(user, &format!("s{i}"), &format!("r{i}"), &["not-granted"]);
        ids.push(h.start(&b).await);
    }
    for id in &ids {
        h.wait_spawn(id, 20, |s| s["state"] == "failed").await;
    }
    // Pages of 2, following the cursor: all five, oldest first, once each.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/spawns?limit=2&cursor={c}"),
            None => "/v1/spawns?limit=2".to_string(),
        };
        let r = h.api("GET", &q, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 2);
        seen.extend(page);
        pages += 1;
        cursor = r.header("x-next-cursor");
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every spawn once, in creation order");
    // Filters.
    let count = |r: Resp| r.json().as_array().unwrap().len();
    assert_eq!(count(h.api("GET", "/v1/spawns?user=alice", None).await), 3);
    assert_eq!(
        count(h.api("GET", "/v1/spawns?user=bob&state=failed", None).await),
        2
    );
    assert_eq!(count(h.api("GET", "/v1/spawns?state=ready", None).await), 0);
    assert_eq!(
        count(
            h.api("GET", "/v1/spawns?since=2000-01-01T00:00:00Z", None)
                .await
        ),
        5
    );
    assert_eq!(
        count(
            h.api("GET", "/v1/spawns?since=2999-01-01T00:00:00%2B02:00", None)
                .await
        ),
        0
    );

    // Purge: an ended spawn is forgotten (record and events), its request
    // id free again; an unknown one is 404.
    let p = format!("/v1/spawns/{}?purge=true", ids[0]);
    let r = h.api("DELETE", &p, None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        h.api("GET", &format!("/v1/spawns/{}", ids[0]), None)
            .await
            .status,
        404
    );
    assert_eq!(
        h.api("GET", &format!("/v1/spawns/{}/events", ids[0]), None)
            .await
            .status,
        404
    );
    assert_eq!(h.api("DELETE", &p, None).await.status, 404);
    let store = wasmspawner_host::store::Store::open(&h.setup.config.state_dir).unwrap();
    assert!(store.events(&ids[0], 0).unwrap().is_empty());
    assert!(store
        .load_all()
        .unwrap()
        .iter()
        .all(|s| s.spawn.id != ids[0]));
    let again = start_body("alice", "s0", "r0", &["not-granted"]);
    let r = h.api("POST", "/v1/spawns", Some(&again)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let again_id = r.json()["id"].as_str().unwrap().to_string();
    // A spawn that has not ended cannot be purged.
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let live = h
        .start(&start_body(
            "alice",
            "live",
            "r-live",
            &["python3", &script, &never],
        ))
        .await;
    let r = h
        .api("DELETE", &format!("/v1/spawns/{live}?purge=true"), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "spawn_active");

    // Retention (default 7 days): nothing ended that recently goes; eight
    // days on, every ended spawn goes and the live one stays.
    h.wait_spawn(&again_id, 20, |s| s["state"] == "failed")
        .await;
    assert_eq!(h.service.purge_expired(chrono::Utc::now()), 0);
    let later = chrono::Utc::now() + chrono::Duration::days(8);
    assert_eq!(h.service.purge_expired(later), 5);
    let left: Vec<String> = h.service.list(None).into_iter().map(|s| s.id).collect();
    assert_eq!(left, vec![live.clone()]);
    h.api("DELETE", &format!("/v1/spawns/{live}"), None).await;
    h.wait_spawn(&live, 20, |s| s["state"] == "stopped").await;
}
