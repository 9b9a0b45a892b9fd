//! The spawn service end to end with the real `local` plugin and a real
//! "single-user server" (a small Python HTTP server that reports its port
//! through the job callback).

use crate::service_common;

use std::time::{Duration, Instant};

use serde_json::json;
use service_common::*;

fn detached_starts(h: &Host, spawn_id: &str) -> usize {
    h.setup
        .audit()
        .iter()
        // One `start` record (then an `end` one) per program started.
        .filter(|r| {
            r["capability"] == "detached.start"
                && r["spawn_id"] == spawn_id
                && r["event"] == "start"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_ready_server_answers_stop_stopped() {
    let h = start_host(&local_config("")).await;
    let script = server_script(h.setup.dir.path());
    let r = h
        .api(
            "POST",
            "/v1/spawns",
            Some(&start_body("alice", "", "req-1", &["python3", &script])),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let spawn = r.json();
    let id = spawn["id"].as_str().unwrap().to_string();
    assert_eq!(spawn["state"], "submitting");
    assert_eq!(spawn["options"]["interface"], "lab");

    // The event stream ends with "ready", every state change on the way.
    let events = read_events(
        &format!("{}/v1/spawns/{id}/events", h.url),
        &["ready", "failed"],
        30,
    )
    .await;
    let states: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(events.last().unwrap().0, "ready", "{events:?}");
    for s in ["validating", "submitting", "queued", "ready"] {
        assert!(states.contains(&s), "no {s} event in {states:?}");
    }
    assert_eq!(events.last().unwrap().1["progress"], 100);
    assert!(events
        .iter()
        .all(|(_, e)| e["progress"].as_u64().unwrap() <= 100));

    let s = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    assert_eq!(s["state"], "ready");
    let (host, port) = (s["host"].as_str().unwrap(), s["port"].as_u64().unwrap());
    assert_eq!(host, "127.0.0.1");

    // The server answers on host:port and got the hub's env from the request.
    let served = request("GET", &format!("http://{host}:{port}/"), None, None)
        .await
        .json();
    assert_eq!(served["spawn_id"], id.as_str());
    assert_eq!(served["api_token"], "hub-secret-token-for-tests");
    // ...but never in argv, the audit log or the database.
    let argv = served["argv"].to_string();
    assert!(!argv.contains("hub-secret-token"), "{argv}");
    let audit = std::fs::read_to_string(h.setup.config.state_dir.join("audit.jsonl")).unwrap();
    assert!(!audit.contains("hub-secret-token"));
    let pid = pid_of(s["job_id"].as_str().unwrap());
    let _cleanup = KillOnDrop(pid);
    let cb_token = env_of(pid, "WASMSPAWNER_CALLBACK_TOKEN").unwrap();
    assert_eq!(cb_token.len(), 64);
    for f in ["spawns.sqlite", "spawns.sqlite-wal"] {
        let p = h.setup.config.state_dir.join(f);
        let bytes = std::fs::read(&p).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("hub-secret-token"),
            "{f} holds the hub token"
        );
        assert!(!text.contains(&cb_token), "{f} holds the callback token");
    }
    assert_eq!(
        env_of(pid, "WASMSPAWNER_CALLBACK_URL").unwrap(),
        format!("{}/v1/spawns/{id}/ready", h.url)
    );
    assert_eq!(env_of(pid, "WASMSPAWNER_SPAWN_ID").unwrap(), id);

    // The user's list has it.
    let list = h.api("GET", "/v1/spawns?user=alice", None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        h.api("GET", "/v1/spawns?user=bob", None).await.json(),
        json!([])
    );

    // Stop: cancel through the plugin, confirmed through status.
    let r = h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["state"], "stopping");
    let s = h.wait_spawn(&id, 20, |s| s["state"] == "stopped").await;
    assert_eq!(s["reason"], "stopped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z"),
        "the server process is still running"
    );
    // Stopping again is a no-op that says so.
    let r = h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "stopped");
    assert_eq!(detached_starts(&h, &id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_before_reporting_fails_fast() {
    let h = start_host(&local_config("start_timeout_secs = 600")).await;
    let t0 = Instant::now();
    let id = h
        .start(&start_body(
            "alice",
            "",
            "r",
            &["python3", "-c", "import sys; sys.exit(3)"],
        ))
        .await;
    let events = read_events(
        &format!("{}/v1/spawns/{id}/events", h.url),
        &["ready", "failed"],
        20,
    )
    .await;
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "failed", "{events:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    let s = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    assert_eq!(s["state"], "failed");
    assert_eq!(s["exit_code"], 3);
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("ended before the server reported its port")
            && reason.contains("exit code 3"),
        "{reason}"
    );
    assert_eq!(last["message"], reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_start_is_one_job() {
    let h = start_host(&local_config("")).await;
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let body = start_body("alice", "gpu", "req-42", &["python3", &script, &never]);
    let a = h.api("POST", "/v1/spawns", Some(&body)).await;
    let b = h.api("POST", "/v1/spawns", Some(&body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(b.status, 200, "{}", b.body);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(b.json()["id"], id.as_str());

    // Same request id, other options: a conflict naming the spawn.
    let mut other = body.clone();
    other["options"]["interface"] = json!(["notebook"]);
    let c = h.api("POST", "/v1/spawns", Some(&other)).await;
    assert_eq!(c.status, 409, "{}", c.body);
    assert_eq!(c.json()["error"], "request_conflict");
    assert_eq!(c.json()["spawn_id"], id.as_str());
    // A new request for the same server while it runs: a conflict too.
    let mut again = body.clone();
    again["request_id"] = json!("req-43");
    let d = h.api("POST", "/v1/spawns", Some(&again)).await;
    assert_eq!(d.status, 409, "{}", d.body);
    assert_eq!(d.json()["error"], "server_active");
    // Another named server of the same user is its own spawn.
    let mut named = body.clone();
    named["server_name"] = json!("cpu");
    let e = h.api("POST", "/v1/spawns", Some(&named)).await;
    assert_eq!(e.status, 201, "{}", e.body);

    let s = h.wait_spawn(&id, 20, |s| s["state"] == "running").await;
    // Retries after submit still return the same spawn.
    let f = h.api("POST", "/v1/spawns", Some(&body)).await;
    assert_eq!(f.status, 200);
    assert_eq!(f.json()["job_id"], s["job_id"]);
    assert_eq!(detached_starts(&h, &id), 1);
    let all = h.api("GET", "/v1/spawns?user=alice", None).await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    for sp in all.as_array().unwrap() {
        h.api(
            "DELETE",
            &format!("/v1/spawns/{}", sp["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
    h.wait_spawn(&id, 20, |s| s["state"] == "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_tokens_are_per_spawn_and_single_use() {
    let h = start_host(&local_config("")).await;
    // Where the reported server listens (ready means listening).
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let mut ids = Vec::new();
    for server in ["a", "b"] {
        let r = h
            .api(
                "POST",
                "/v1/spawns",
                Some(&start_body(
                    "alice",
                    server,
                    server,
                    &["python3", &script, &never],
                )),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let mut tokens = Vec::new();
    for id in &ids {
        let s = h.wait_spawn(id, 20, |s| s["state"] == "running").await;
        tokens.push(
            env_of(
                pid_of(s["job_id"].as_str().unwrap()),
                "WASMSPAWNER_CALLBACK_TOKEN",
            )
            .unwrap(),
        );
    }
    let url = format!("{}/v1/spawns/{}/ready", h.url, ids[0]);
    let ok_body = json!({"port": port, "host": "127.0.0.1"});
    // No token, a wrong one, the API token, the other spawn's: refused.
    for t in [
        None,
        Some("0".repeat(64).as_str()),
        Some(TOKEN),
        Some(tokens[1].as_str()),
    ] {
        let r = request("POST", &url, t, Some(&ok_body)).await;
        assert_eq!(r.status, 401, "{t:?}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_callback_token");
    }
    // Only port and host, validated.
    for (body, code) in [
        (json!({"port": 0}), 422),
        (json!({"port": 70000}), 422),
        (json!({"port": port, "host": "bad host!"}), 422),
        (json!({"port": port, "state": "ready"}), 422),
    ] {
        let r = request("POST", &url, Some(&tokens[0]), Some(&body)).await;
        assert_eq!(r.status, code, "{body}: {}", r.body);
    }
    // The scheduler says the job runs on 127.0.0.1: another host is refused.
    let r = request(
        "POST",
        &url,
        Some(&tokens[0]),
        Some(&json!({"port": port, "host": "10.9.8.7"})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "callback_host_mismatch");
    assert_eq!(h.service.get(&ids[0]).unwrap().state.as_str(), "running");
    // The right token once...
    let r = request("POST", &url, Some(&tokens[0]), Some(&ok_body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "ready");
    assert_eq!(r.json()["port"], port);
    // ...and never again.
    let r = request("POST", &url, Some(&tokens[0]), Some(&json!({"port": 9999}))).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(h.service.get(&ids[0]).unwrap().port, Some(port));
    // A stopped spawn takes no callback.
    h.api("DELETE", &format!("/v1/spawns/{}", ids[1]), None)
        .await;
    let url1 = format!("{}/v1/spawns/{}/ready", h.url, ids[1]);
    let r = request("POST", &url1, Some(&tokens[1]), Some(&ok_body)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    h.api("DELETE", &format!("/v1/spawns/{}", ids[0]), None)
        .await;
    for id in &ids {
        h.wait_spawn(id, 20, |s| s["state"] == "stopped").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_api_token_get_401() {
    let h = start_host(&local_config("")).await;
    let body = start_body("alice", "", "r", &["python3", "-c", "pass"]);
    for (m, p) in [
        ("GET", "/v1/spawns"),
        ("POST", "/v1/spawns"),
        ("GET", "/v1/spawns/sp-x"),
        ("DELETE", "/v1/spawns/sp-x"),
        ("GET", "/v1/spawns/sp-x/events"),
        ("GET", "/v1/plugins"),
        ("GET", "/v1/plugins/local/form?user=alice"),
        ("GET", "/v1/metrics"),
        ("GET", "/v1/metrics?format=prometheus"),
        ("GET", "/v1/openapi.json"),
    ] {
        for t in [None, Some("wrong-token-wrong-token")] {
            let r = request(m, &format!("{}{p}", h.url), t, Some(&body)).await;
            assert_eq!(r.status, 401, "{m} {p} with {t:?}: {}", r.body);
            assert_eq!(r.json()["error"], "unauthorized");
        }
    }
    assert!(
        h.service.list(None).is_empty(),
        "an unauthenticated POST made a spawn"
    );
    assert_eq!(
        request("GET", &format!("{}/healthz", h.url), None, None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_are_422_with_fields_and_the_form_renders_as_html() {
    let h = start_host(&local_config("")).await;
    let mut body = start_body("alice", "", "r1", &["python3", "-c", "pass"]);
    body["options"] = json!({"interface": ["emacs"], "nope": ["1"]});
    let r = h.api("POST", "/v1/spawns", Some(&body)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let e = r.json();
    assert_eq!(e["error"], "invalid_options");
    let fields: Vec<&str> = e["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"nope"), "{e}");
    assert!(
        h.service.list(None).is_empty(),
        "a refused request left a spawn"
    );
    // A corrected retry may reuse the request id.
    body["options"] = json!({"interface": ["notebook"]});
    let r = h.api("POST", "/v1/spawns", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);

    let html = h
        .api("GET", "/v1/plugins/local/form?user=alice&format=html", None)
        .await;
    assert_eq!(html.status, 200);
    assert!(
        html.headers
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{}",
        html.headers
    );
    assert!(
        html.body.contains("name=\"interface\"") && html.body.contains("<option value=\"lab\""),
        "{}",
        html.body
    );
    let schema = h
        .api("GET", "/v1/plugins/local/form?user=alice", None)
        .await
        .json();
    assert_eq!(schema["fields"][0]["id"], "interface");
    let bad = h
        .api("GET", "/v1/plugins/local/form?user=alice&format=xml", None)
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_naming_a_forbidden_host_is_refused_shown_and_audited() {
    // callback_hosts lets the callback name any address, but the
    // execution-host rule still refuses the forbidden classes.
    let h = start_host(&local_config_with(
        "poll_interval_secs = 0.5\nfast_poll_secs = 0.2\ncallback_hosts = [\"0.0.0.0/0\", \"::/0\"]",
        "",
    ))
    .await;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let id = h
        .start(&start_body("alice", "", "r", &["python3", &script, &never]))
        .await;
    let s = h.wait_spawn(&id, 20, |s| s["state"] == "running").await;
    let pid = pid_of(s["job_id"].as_str().unwrap());
    let _cleanup = KillOnDrop(pid);
    let token = env_of(pid, "WASMSPAWNER_CALLBACK_TOKEN").unwrap();
    let url = format!("{}/v1/spawns/{id}/ready", h.url);
    for (host, class) in [
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
    ] {
        let r = request(
            "POST",
            &url,
            Some(&token),
            Some(&json!({"port": port, "host": host})),
        )
        .await;
        assert_eq!(r.status, 403, "{host}: {}", r.body);
        assert_eq!(r.json()["error"], "execution_host_refused", "{}", r.body);
        assert!(
            r.json()["message"].as_str().unwrap().contains(class),
            "{}",
            r.body
        );
        let s = h.service.get(&id).unwrap();
        assert_eq!(s.state.as_str(), "running");
        assert!(s.host.is_none());
        let reason = s.reason.unwrap_or_default();
        assert!(
            reason.contains("refuses") && reason.contains(class),
            "{reason}"
        );
    }
    let audit: Vec<_> = h
        .setup
        .audit()
        .into_iter()
        .filter(|r| r["capability"] == "execution-host" && r["spawn_id"] == id.as_str())
        .collect();
    assert_eq!(audit.len(), 5, "{audit:#?}");
    assert!(audit.iter().all(|r| r["decision"] == "deny"));
    assert_eq!(audit[0]["program"], "169.254.169.254");
    // The token was not spent: an allowed host makes the spawn ready.
    let r = request(
        "POST",
        &url,
        Some(&token),
        Some(&json!({"port": port, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["host"], "127.0.0.1");
    h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    h.wait_spawn(&id, 20, |s| s["state"] == "stopped").await;
}

/// A spawn whose job is submitted but not yet polled: its running process
/// and callback token (the server script waits for a file that never comes,
/// so the test makes the callbacks itself).
async fn unpolled_spawn(h: &Host, server: &str) -> (String, String) {
    let script = server_script(h.setup.dir.path());
    let never = h.setup.dir.path().join("never").display().to_string();
    let id = h
        .start(&start_body(
            "alice",
            server,
            server,
            &["python3", &script, &never],
        ))
        .await;
    let s = h
        .wait_spawn(&id, 20, |s| {
            s["state"] == "queued" || s["state"] == "running"
        })
        .await;
    let pid = pid_of(s["job_id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let token = loop {
        if let Some(t) = env_of(pid, "WASMSPAWNER_CALLBACK_TOKEN") {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no token in the job's environment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    (id, token)
}

/// The callback host rule from the first moment: a callback before the
/// first poll makes the host ask the scheduler now; a host the scheduler
/// does not name is refused, the right one accepted, without waiting for
/// the (30 s) poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_callback_waits_for_the_scheduler_not_the_callers_word() {
    let h = start_host(&local_config_with(
        "poll_interval_secs = 30\nfast_poll_secs = 30",
        "",
    ))
    .await;
    let (id, token) = unpolled_spawn(&h, "early").await;
    assert!(
        h.service.get(&id).unwrap().exec_host.is_none(),
        "polled already"
    );
    let _kill = KillOnDrop(pid_of(
        h.service.get(&id).unwrap().job_id.as_deref().unwrap(),
    ));
    let url = format!("{}/v1/spawns/{id}/ready", h.url);
    let t0 = std::time::Instant::now();
    let r = request(
        "POST",
        &url,
        Some(&token),
        Some(&json!({"port": 8888, "host": "evil.example.org"})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "callback_host_mismatch");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
    // One status call, made for the callback.
    assert_eq!(h.metrics("local", "status_calls"), 1);
    let s = h.service.get(&id).unwrap();
    assert_eq!(s.exec_host.as_deref(), Some("127.0.0.1"));
    assert_ne!(s.state.as_str(), "ready");
    h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
}

/// With no answer from the scheduler, an early callback is told to retry
/// (503, Retry-After), and the caller's word is not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_callback_without_an_answer_is_told_to_retry() {
    let h = start_host(&local_config_with(
        "poll_interval_secs = 30\nfast_poll_secs = 30",
        "",
    ))
    .await;
    let (id, token) = unpolled_spawn(&h, "retry").await;
    assert!(
        h.service.get(&id).unwrap().exec_host.is_none(),
        "polled already"
    );
    let _kill = KillOnDrop(pid_of(
        h.service.get(&id).unwrap().job_id.as_deref().unwrap(),
    ));
    h.stop_pollers();
    let url = format!("{}/v1/spawns/{id}/ready", h.url);
    for body in [
        json!({"port": 8888, "host": "127.0.0.1"}),
        json!({"port": 8888}),
    ] {
        let r = request("POST", &url, Some(&token), Some(&body)).await;
        assert_eq!(r.status, 503, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "execution_host_unknown");
        assert_eq!(
            r.header("retry-after").as_deref(),
            Some("2"),
            "{}",
            r.headers
        );
    }
    let s = h.service.get(&id).unwrap();
    assert_eq!(s.state.as_str(), "queued");
    assert!(s.host.is_none());
    // The token is still good: the job may retry.
    assert!(h.service.callback_token_ok(&id, &token));
    h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
}

/// Ready means listening: a reported port nobody listens on is not ready
/// (202); it becomes ready once a server accepts connections there, and
/// a port that never listens fails the spawn with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_server_accepts_connections() {
    let h = start_host(&local_config_with(
        "poll_interval_secs = 30\nfast_poll_secs = 30\nstart_timeout_secs = 3",
        "",
    ))
    .await;
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (id, token) = unpolled_spawn(&h, "late").await;
    let _kill = KillOnDrop(pid_of(
        h.service.get(&id).unwrap().job_id.as_deref().unwrap(),
    ));
    let port = free_port();
    let url = format!("{}/v1/spawns/{id}/ready", h.url);
    let r = request(
        "POST",
        &url,
        Some(&token),
        Some(&json!({"port": port, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_ne!(r.json()["state"], "ready");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_ne!(h.service.get(&id).unwrap().state.as_str(), "ready");
    // The server starts listening: ready within a few checks.
    let t0 = std::time::Instant::now();
    let _server = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let s = h.wait_spawn(&id, 5, |s| s["state"] == "ready").await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(s["port"], port);

    // Never listening: failed after start_timeout_secs, saying where.
    let (id2, token2) = unpolled_spawn(&h, "never").await;
    let pid2 = pid_of(h.service.get(&id2).unwrap().job_id.as_deref().unwrap());
    let _kill2 = KillOnDrop(pid2);
    let dead = free_port();
    let url2 = format!("{}/v1/spawns/{id2}/ready", h.url);
    let r = request(
        "POST",
        &url2,
        Some(&token2),
        Some(&json!({"port": dead, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = h.wait_spawn(&id2, 10, |s| s["state"] == "failed").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("127.0.0.1:{dead}")) && reason.contains("nothing accepted"),
        "{reason}"
    );
    // ...and its job is cancelled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone(pid2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job of the failed spawn still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
}

/// Two live spawns are never ready at one host:port: the second callback
/// is refused with 409 port_in_use, its token still good for another port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_spawns_never_share_a_host_port() {
    let h = start_host(&local_config("")).await;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let (a, ta) = unpolled_spawn(&h, "a").await;
    let _ka = KillOnDrop(pid_of(
        h.service.get(&a).unwrap().job_id.as_deref().unwrap(),
    ));
    let (b, tb) = unpolled_spawn(&h, "b").await;
    let _kb = KillOnDrop(pid_of(
        h.service.get(&b).unwrap().job_id.as_deref().unwrap(),
    ));
    let cb = |id: &str| format!("{}/v1/spawns/{id}/ready", h.url);
    let r = request(
        "POST",
        &cb(&a),
        Some(&ta),
        Some(&json!({"port": port, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for host in ["127.0.0.1", "127.0.0.1"] {
        let r = request(
            "POST",
            &cb(&b),
            Some(&tb),
            Some(&json!({"port": port, "host": host})),
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.json()["error"], "port_in_use");
        assert!(r.body.contains(&a), "{}", r.body);
    }
    assert!(h.service.callback_token_ok(&b, &tb));
    let r = request(
        "POST",
        &cb(&b),
        Some(&tb),
        Some(&json!({"port": other_port, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Once the first has ended, its address is free again.
    h.api("DELETE", &format!("/v1/spawns/{a}"), None).await;
    h.wait_spawn(&a, 20, |s| s["state"] == "stopped").await;
    let (c, tc) = unpolled_spawn(&h, "c").await;
    let _kc = KillOnDrop(pid_of(
        h.service.get(&c).unwrap().job_id.as_deref().unwrap(),
    ));
    let r = request(
        "POST",
        &cb(&c),
        Some(&tc),
        Some(&json!({"port": port, "host": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for id in [&b, &c] {
        h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    }
}
