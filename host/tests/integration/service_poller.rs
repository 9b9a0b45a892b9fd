//! Batched polling and the scheduler's odd answers, scripted with the probe
//! test plugin: one `status` call per interval for all jobs, `unknown` never
//! taken as done, queue timeout, stop while validating or submitting.

use crate::service_common;

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
# `sleep` behaviour: form and validate sleep too.
phases = ["form", "validate", "submit", "status", "cancel"]
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

/// Waits (at most 10 s) for an event of spawn `id` containing `text`.
async fn wait_event(h: &Host, id: &str, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !events_of(h, id).await.iter().any(|m| m.contains(text)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no event with {text:?}: {:?}",
            events_of(h, id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    wait_event(&h, &id, "cancel sent").await;
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

/// The bytes of the instance's SQLite files (database and WAL).
fn store_bytes(h: &Host) -> u64 {
    ["spawns.sqlite", "spawns.sqlite-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(h.setup.config.state_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

fn clean(s: &str) -> bool {
    !s.contains(['\n', '\r', '\u{1b}', '\u{202e}'])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_submit_error_is_cut_and_sanitized_in_the_store_and_the_api() {
    let h = start_host(&probe(
        "big-error",
        "poll_interval_secs = 0.2\nfast_poll_secs = 0.2",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    let s = h.wait_spawn(&id, 30, |s| s["state"] == "failed").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the job could not be submitted: "),
        "{reason}"
    );
    assert!(reason.contains("sbatch: error: forged"), "{reason}");
    assert!(clean(reason), "{reason:?}");
    assert!(reason.len() <= 2048, "{} bytes", reason.len());
    let one = h.api("GET", &format!("/v1/spawns/{id}"), None).await;
    let all = h.api("GET", "/v1/spawns", None).await;
    let events = h.service.events(&id).unwrap();
    assert!(events
        .iter()
        .all(|e| e.message.len() <= 2048 && clean(&e.message)));
    let stored = store_bytes(&h);
    eprintln!(
        "8 MiB submit error: spawn JSON {} B, GET /v1/spawns {} B, SQLite {stored} B, {} events",
        one.body.len(),
        all.body.len(),
        events.len()
    );
    assert!(one.body.len() < 8 << 10, "{} bytes", one.body.len());
    assert!(all.body.len() < 8 << 10, "{} bytes", all.body.len());
    assert!(stored < 1 << 20, "{stored} bytes of SQLite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_options_over_the_bound_refuse_the_spawn_and_store_nothing() {
    // big-options: validate returns a 32 MiB option.
    let h = start_host(&format!(
        "{}[instances.probe.limits]\nmemory_mib = 256\n",
        probe("big-options", "")
    ))
    .await;
    let r = h.api("POST", "/v1/spawns", Some(&body("alice", "r"))).await;
    assert_eq!(r.status, 502, "{}", &r.body[..r.body.len().min(2000)]);
    assert!(r.body.len() < 8 << 10, "{} bytes", r.body.len());
    let e = r.json();
    assert_eq!(e["error"], "plugin_failed", "{e}");
    let m = e["message"].as_str().unwrap();
    // The limit is named (the service's MAX_OPTIONS_BYTES; the runtime
    // may refuse first with the same bound).
    assert!(m.contains("options") && m.contains("65536"), "{m}");
    assert!(h.service.list(None).is_empty());
    let stored = store_bytes(&h);
    eprintln!(
        "32 MiB validated option: refused, error {} B, SQLite {stored} B",
        r.body.len()
    );
    assert!(stored < 1 << 20, "{stored} bytes of SQLite");
    // The same request id may be used again (nothing was kept).
    let all = h.api("GET", "/v1/spawns", None).await;
    assert!(all.body.len() < 1024, "{}", all.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cancel_backs_off_says_why_and_adds_few_events() {
    // cancel-fails: every job running; cancel always fails.
    let h = start_host(&probe(
        "cancel-fails",
        "poll_interval_secs = 0.1\nfast_poll_secs = 0.1",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    h.wait_spawn(&id, 10, |s| s["state"] == "running").await;
    let before = h.service.events(&id).unwrap().len();
    let r = h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    assert_eq!(s["state"], "stopping", "{s}");
    let reason = s["reason"].as_str().unwrap();
    let prefix = format!("cancelling job probe-{id} failed (attempt ");
    assert!(reason.starts_with(&prefix), "{reason}");
    assert!(
        reason.contains("Access/permission denied") && reason.contains("; next try in "),
        "{reason}"
    );
    let attempt: u32 = reason[prefix.len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 1 s doubling (±10%): attempts at about 0, 1, 3, 7 s, not one per 0.1 s poll.
    assert!((3..=5).contains(&attempt), "attempt {attempt}: {reason}");
    let events = events_of(&h, &id).await;
    let failures = events.iter().filter(|m| m.contains("failed: ")).count();
    eprintln!(
        "failing cancel for 10 s: {attempt} attempts, {} events after the stop ({failures} about the failure)",
        events.len() - before
    );
    assert_eq!(failures, 1, "{events:#?}");
    assert!(events.len() - before <= 3, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_reason_that_changes_every_poll_is_not_an_event_every_poll() {
    let h = start_host(&probe(
        "changing-reason",
        "poll_interval_secs = 0.1\nfast_poll_secs = 0.1",
    ))
    .await;
    let id = h.start(&body("alice", "r")).await;
    let first = h
        .wait_spawn(&id, 10, |s| {
            s["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("Priority"))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    // The spawn shows the latest reason (sanitized)...
    assert_ne!(first["reason"], later["reason"]);
    assert!(clean(later["reason"].as_str().unwrap()), "{later}");
    // ...but the ~30 changes are one event.
    let queued: Vec<String> = events_of(&h, &id)
        .await
        .into_iter()
        .filter(|m| m.starts_with("queued: "))
        .collect();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert!(clean(&queued[0]), "{queued:?}");
    assert!(h.metrics("probe", "status_calls") >= 20);
}

/// A probe instance whose jobs run on the host in option `raw` (bad-host),
/// with a `submit_host` (a remote instance: no loopback by default) unless
/// `remote` is false.
async fn bad_host(remote: bool, lifecycle: &str) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, "").unwrap();
    let remote = if remote {
        format!(
            "submit_host = \"login1.example.org\"\n[instances.probe.ssh]\nknown_hosts = \"{}\"\n",
            kh.display()
        )
    } else {
        String::new()
    };
    let h = start_host(&format!(
        r#"
[instances.probe]
plugin = "{{plugin:probe}}"
{remote}[instances.probe.config]
behavior = "bad-host"
[instances.probe.lifecycle]
poll_interval_secs = 0.1
fast_poll_secs = 0.1
{lifecycle}
"#
    ))
    .await;
    (h, dir)
}

/// Starts one spawn per host (job on that host); its state once it is
/// running or failed.
async fn run_on(h: &Host, hosts: &[&str]) -> Vec<serde_json::Value> {
    let mut ids = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let mut b = body(&format!("u{i}"), "r");
        b["options"] = json!({"raw": [host]});
        ids.push(h.start(&b).await);
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(
            h.wait_spawn(&id, 20, |s| {
                s["state"] == "running" || s["state"] == "failed"
            })
            .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_hosts_in_forbidden_classes_are_refused_shown_and_audited() {
    let (h, _dir) = bad_host(true, "").await;
    let refused = [
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("metadata.google.internal", "metadata"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("0x7f000001", "loopback"),
    ];
    let hosts: Vec<&str> = refused.iter().map(|(h, _)| *h).chain(["node7"]).collect();
    let spawns = run_on(&h, &hosts).await;
    let audit = h.setup.audit();
    for ((host, class), s) in refused.iter().zip(&spawns) {
        assert_eq!(s["state"], "failed", "{host}: {s}");
        assert!(
            s["host"].is_null() && s["exec_host"].is_null(),
            "{host}: {s}"
        );
        let reason = s["reason"].as_str().unwrap();
        assert!(
            reason.contains("refuses") && reason.contains(class) && reason.contains("cancelled"),
            "{host}: {reason}"
        );
        if *class == "loopback" {
            assert!(reason.contains("lifecycle.allow_loopback"), "{reason}");
        }
        let id = s["id"].as_str().unwrap();
        assert!(events_of(&h, id).await.iter().any(|m| m == reason));
        let rec = audit
            .iter()
            .find(|r| r["capability"] == "execution-host" && r["spawn_id"] == id)
            .unwrap_or_else(|| panic!("no audit record for {host}"));
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert_eq!(rec["instance"], "probe", "{rec}");
        assert!(rec["reason"].as_str().unwrap().contains(class), "{rec}");
    }
    // An ordinary name is used.
    let ok = spawns.last().unwrap();
    assert_eq!(ok["state"], "running", "{ok}");
    assert_eq!(ok["exec_host"], "node7");
    // The refused job is cancelled, not left running.
    let id = spawns[0]["id"].as_str().unwrap().to_string();
    wait_event(&h, &id, "cancel of job").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_hosts_rules_and_loopback_on_a_local_instance() {
    let (h, _dir) = bad_host(
        true,
        "execution_hosts = [\".cluster.example.org\", \"10.1.0.0/16\", \"login1\"]",
    )
    .await;
    let spawns = run_on(
        &h,
        &[
            "node7.cluster.example.org",
            "10.1.2.3",
            "LOGIN1",
            "node7.evil.org",
            "cluster.example.org",
            "10.2.0.1",
            "169.254.169.254",
        ],
    )
    .await;
    for s in &spawns[..3] {
        assert_eq!(s["state"], "running", "{s}");
    }
    for s in &spawns[3..6] {
        assert_eq!(s["state"], "failed", "{s}");
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .contains("matches no lifecycle.execution_hosts rule"),
            "{s}"
        );
    }
    assert!(spawns[6]["reason"].as_str().unwrap().contains("metadata"));

    // A local instance (no submit_host, no tunnel): loopback is fine, the
    // forbidden classes are not.
    let (h, _dir) = bad_host(false, "").await;
    let spawns = run_on(
        &h,
        &[
            "::1",
            "localhost",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
        ],
    )
    .await;
    for s in &spawns[..3] {
        assert_eq!(s["state"], "running", "{s}");
    }
    for s in &spawns[3..] {
        assert_eq!(s["state"], "failed", "{s}");
    }
    // ...unless the operator says no.
    let (h, _dir) = bad_host(false, "allow_loopback = false").await;
    let s = &run_on(&h, &["localhost"]).await[0];
    assert_eq!(s["state"], "failed", "{s}");
}
