//! Batched polling and the scheduler's odd answers, scripted with the probe
//! test plugin: one `status` call per interval for all jobs, `unknown` never
//! taken as done, queue timeout, stop while validating or submitting.

mod common;
mod service_common;

use std::time::Duration;

use serde_json::json;
use service_common::*;

fn probe(behavior: &str, lifecycle: &str) -> String {
    format!(
        r#"
[instances.probe]
plugin = "{{plugin:probe}}"
[instances.probe.config]
behavior = "{behavior}"
seconds = "1"
[[instances.probe.grants.programs]]
program = "sleep"
args = ["*"]
[instances.probe.lifecycle]
{lifecycle}
"#
    )
}

fn body(user: &str, request_id: &str) -> serde_json::Value {
    json!({
        "user": {"name": user},
        "instance": "probe",
        "request_id": request_id,
        "options": {"cores": ["2"]},
        "env": {"JUPYTERHUB_API_TOKEN": "secret-secret"},
        "cmd": ["jupyterhub-singleuser"],
    })
}

async fn events_of(h: &Host, id: &str) -> Vec<String> {
    h.service
        .events(id)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_status_call_per_interval_for_50_jobs() {
    let h = start_host(&probe(
        "ok",
        "poll_interval_secs = 0.5\nfast_poll_secs = 0.5",
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = h
            .api("POST", "/v1/spawns", Some(&body(&format!("u{i}"), "r")))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        h.wait_spawn(id, 30, |s| s["state"] == "running").await;
    }
    let calls0 = h.metrics("probe", "status_calls");
    let jobs0 = h.metrics("probe", "jobs_polled");
    // The hub polls a lot meanwhile: answered from the cached view.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        for id in ids.iter().take(10) {
            let r = h.api("GET", &format!("/v1/spawns/{id}"), None).await;
            assert_eq!(r.json()["state"], "running");
        }
    }
    let calls = h.metrics("probe", "status_calls") - calls0;
    let jobs = h.metrics("probe", "jobs_polled") - jobs0;
    // 3 s at one call per 0.5 s (+ up to 10% jitter): 5 or 6, never one per job or per hub poll.
    assert!((3..=7).contains(&calls), "{calls} status calls in 3 s");
    assert_eq!(jobs, 50 * calls, "every call asked about all 50 jobs");
    assert_eq!(h.service.metrics()["spawns"]["running"], 50);

    // The same counters for a Prometheus scraper.
    let r = h.api("GET", "/v1/metrics?format=prometheus", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    let sample = |name: &str| -> u64 {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{}", r.body))
            .parse()
            .unwrap()
    };
    assert_eq!(
        sample("wasmspawner_spawns{instance=\"probe\",state=\"running\"}"),
        50
    );
    let scraped = sample("wasmspawner_status_calls_total{instance=\"probe\"}");
    assert!(scraped >= calls0 + calls, "{scraped}");
    assert_eq!(
        sample("wasmspawner_jobs_polled_total{instance=\"probe\"}"),
        h.metrics("probe", "jobs_polled")
    );
    assert_eq!(sample("wasmspawner_plugin_healthy{instance=\"probe\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_is_never_done_and_is_flagged_after_the_grace() {
    // short-status: the plugin returns no states, so every job is unknown.
    let h = start_host(&probe(
        "short-status",
        "poll_interval_secs = 0.1\nfast_poll_secs = 0.1\nunknown_grace_polls = 3",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    let s = h.wait_spawn(&id, 10, |s| !s["flagged"].is_null()).await;
    assert_eq!(s["state"], "queued", "{s}");
    assert!(s["unknown_polls"].as_u64().unwrap() >= 3);
    assert!(
        s["flagged"].as_str().unwrap().contains("the job is kept"),
        "{s}"
    );
    assert!(events_of(&h, &id)
        .await
        .iter()
        .any(|m| m.contains("3 polls in a row")));
    // Later it is still queued and still polled; nothing cancelled it.
    let flagged_at = s["unknown_polls"].as_u64().unwrap();
    let s = h
        .wait_spawn(&id, 10, |s| {
            s["unknown_polls"].as_u64().unwrap() >= flagged_at + 3
        })
        .await;
    assert_eq!(s["state"], "queued");
    assert!(!events_of(&h, &id)
        .await
        .iter()
        .any(|m| m.contains("cancel")));
    // Stopping sends the cancel; without an answer it stays stopping (not forgotten).
    assert_eq!(
        h.api("DELETE", &format!("/v1/spawns/{id}"), None)
            .await
            .status,
        202
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !events_of(&h, &id)
        .await
        .iter()
        .any(|m| m.contains("cancel sent"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            events_of(&h, &id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    assert_eq!(s["state"], "stopping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pending_past_the_queue_timeout_fails_with_the_reason() {
    // bad-status: every job pending ("Resources").
    let h = start_host(&probe(
        "bad-status",
        "poll_interval_secs = 0.1\nfast_poll_secs = 0.1\nqueue_timeout_secs = 1",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    let s = h.wait_spawn(&id, 5, |s| s["reason"] == "Resources").await;
    assert_eq!(s["state"], "queued");
    let events = read_events(
        &format!("{}/v1/spawns/{id}/events", h.url),
        &["failed", "ready"],
        10,
    )
    .await;
    assert!(
        events
            .iter()
            .any(|(_, e)| e["message"] == "queued: Resources"),
        "{events:?}"
    );
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "failed");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("queue_timeout_secs"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_validating_or_submitting() {
    // sleep: form, validate, submit and cancel each take a second.
    let h = start_host(&probe(
        "sleep",
        "poll_interval_secs = 0.2\nfast_poll_secs = 0.2",
    ))
    .await;
    let h = std::sync::Arc::new(h);

    // While validating: the job is never submitted.
    let h2 = h.clone();
    let post = tokio::spawn(async move {
        h2.api("POST", "/v1/spawns", Some(&body("alice", "r1")))
            .await
    });
    let id = loop {
        if let Some(s) = h.service.list(Some("alice")).first() {
            break s.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(h.service.get(&id).unwrap().state.as_str(), "validating");
    let r = h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post.await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["state"], "stopped");
    assert!(r.json()["job_id"].is_null());

    // While submitting: the job that comes back is cancelled. (The submit
    // takes a second; if the stop wins the race to the background submit,
    // nothing is submitted at all. Either way no job is left running.)
    let r = h.api("POST", "/v1/spawns", Some(&body("bob", "r2"))).await;
    assert_eq!(r.json()["state"], "submitting", "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.api("DELETE", &format!("/v1/spawns/{id}"), None)
            .await
            .json()["state"],
        "stopping"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    loop {
        let ev = events_of(&h, &id).await;
        let s = h.service.get(&id).unwrap();
        if s.state.as_str() == "stopped" && s.job_id.is_none() {
            assert!(
                ev.iter()
                    .any(|m| m == "stopped before the job was submitted"),
                "{ev:?}"
            );
            break;
        }
        if ev.iter().any(|m| m.contains("cancel sent")) {
            assert!(
                ev.iter()
                    .any(|m| m.contains("submitted while a stop was requested")),
                "{ev:?}"
            );
            assert_eq!(s.job_id.as_deref(), Some(format!("probe-{id}").as_str()));
            // probe says "running" for ever: the stop waits for the scheduler.
            assert_eq!(s.state.as_str(), "stopping");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no cancel: {ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_reports_fails_after_the_start_timeout() {
    // ok: every job runs at once; nobody calls back.
    let h = start_host(&probe(
        "ok",
        "poll_interval_secs = 0.1\nfast_poll_secs = 0.1\nstart_timeout_secs = 1",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    let events = read_events(
        &format!("{}/v1/spawns/{id}/events", h.url),
        &["failed", "ready"],
        15,
    )
    .await;
    assert!(
        events.iter().any(|(_, e)| e["state"] == "running"),
        "{events:?}"
    );
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "failed");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("start_timeout_secs"),
        "{last}"
    );
    // The job is cancelled, not left running.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let sent = format!("cancel of job probe-{id} sent");
    while !events_of(&h, &id).await.contains(&sent) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            events_of(&h, &id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_request_make_one_job() {
    let h = std::sync::Arc::new(start_host(&probe("ok", "")).await);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                h.api("POST", "/v1/spawns", Some(&body("alice", "same")))
                    .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        codes.push(r.status);
        ids.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    codes.sort();
    assert_eq!(codes, [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().unwrap();
    h.wait_spawn(&id, 10, |s| s["state"] == "running").await;
    assert_eq!(h.service.list(None).len(), 1);
    let submits = h
        .service
        .events(&id)
        .unwrap()
        .iter()
        .filter(|e| e.message.ends_with("submitted"))
        .count();
    assert_eq!(submits, 1);
}
