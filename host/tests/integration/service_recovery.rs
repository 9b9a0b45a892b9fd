//! The real `wasmspawner serve` binary killed with SIGKILL mid-spawn and
//! started again: every spawn is recovered, nothing is submitted twice.

use crate::common;
use crate::service_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_common::*;

/// A free port below the ephemeral range: while the host is down (killed),
/// a job's server binding port 0 cannot take the host's port.
fn free_port() -> u16 {
    loop {
        let p = 20_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let body = local_config("");
    let plugin = common::plugin_wasm("local");
    let text = format!(
        "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n{}",
        dir.join("state").display(),
        token.display(),
        body.replace("{plugin:local}", &plugin.display().to_string())
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `wasmspawner serve`, killed (SIGKILL) when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(config: &Path, log: &Path) -> Served {
    HOST_LOG.with(|l| *l.borrow_mut() = log.to_path_buf());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wasmspawner"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Served(child)
}

thread_local! {
    /// The log of the host a test waits for (printed if it never answers).
    static HOST_LOG: std::cell::RefCell<std::path::PathBuf> = Default::default();
}

async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(url.strip_prefix("http://").unwrap()),
        )
        .await
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // One request on this connection; a reset while the host
            // starts is a retry, not a failure.
            let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let mut raw = Vec::new();
            if s.write_all(req.as_bytes()).await.is_ok()
                && s.read_to_end(&mut raw).await.is_ok()
                && raw.starts_with(b"HTTP/1.1 200")
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the host did not come up: {}",
            std::fs::read_to_string(HOST_LOG.with(|l| l.borrow().clone())).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api(url: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
    request(method, &format!("{url}{path}"), Some(TOKEN), body).await
}

async fn wait_state(url: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = api(url, "GET", &format!("/v1/spawns/{id}"), None)
            .await
            .json();
        if s["state"] == want {
            return s;
        }
        assert!(Instant::now() < deadline, "spawn {id} never {want}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_spawn_and_restart_recovers_every_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let log = dir.path().join("host.log");
    let url = format!("http://127.0.0.1:{port}");
    let script = server_script(dir.path());
    let go = dir.path().join("go").display().to_string();

    let host = serve(&config, &log).await;
    wait_healthy(&url).await;
    // A: ready before the crash. B: its job runs, the server has not reported yet.
    let a = api(
        &url,
        "POST",
        "/v1/spawns",
        Some(&start_body("alice", "", "a", &["python3", &script])),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = a.json()["id"].as_str().unwrap().to_string();
    let b = api(
        &url,
        "POST",
        "/v1/spawns",
        Some(&start_body("bob", "", "b", &["python3", &script, &go])),
    )
    .await;
    let b = b.json()["id"].as_str().unwrap().to_string();
    let a_before = wait_state(&url, &a, "ready").await;
    let b_before = wait_state(&url, &b, "running").await;
    let pids: Vec<u32> = [&a_before, &b_before]
        .iter()
        .map(|s| pid_of(s["job_id"].as_str().unwrap()))
        .collect();
    let _cleanup: Vec<KillOnDrop> = pids.iter().map(|p| KillOnDrop(*p)).collect();

    drop(host); // SIGKILL
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the host still answers after SIGKILL"
    );

    let host = serve(&config, &log).await;
    wait_healthy(&url).await;
    let a_after = api(&url, "GET", &format!("/v1/spawns/{a}"), None)
        .await
        .json();
    assert_eq!(a_after["state"], "ready", "{a_after}");
    assert_eq!(a_after["port"], a_before["port"]);
    let served = request(
        "GET",
        &format!("http://127.0.0.1:{}/", a_after["port"]),
        None,
        None,
    )
    .await
    .json();
    assert_eq!(served["spawn_id"], a.as_str());

    let b_after = api(&url, "GET", &format!("/v1/spawns/{b}"), None)
        .await
        .json();
    assert!(
        matches!(b_after["state"].as_str(), Some("running" | "queued")),
        "{b_after}"
    );
    assert_eq!(b_after["job_id"], b_before["job_id"]);
    // The job reports now, with the token it got before the crash.
    std::fs::write(&go, "").unwrap();
    let b_ready = wait_state(&url, &b, "ready").await;
    let served = request(
        "GET",
        &format!("http://127.0.0.1:{}/", b_ready["port"]),
        None,
        None,
    )
    .await
    .json();
    assert_eq!(served["spawn_id"], b.as_str());

    // Nothing was submitted twice.
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    for id in [&a, &b] {
        let n = audit
            .lines()
            // One `start` record (then an `end` one) per program started.
            .filter(|l| {
                l.contains("\"detached.start\"")
                    && l.contains("\"event\":\"start\"")
                    && l.contains(id.as_str())
            })
            .count();
        assert_eq!(n, 1, "spawn {id} was started {n} times");
    }
    // Both stop through the restarted host.
    for id in [&a, &b] {
        assert_eq!(
            api(&url, "DELETE", &format!("/v1/spawns/{id}"), None)
                .await
                .status,
            202
        );
    }
    for id in [&a, &b] {
        wait_state(&url, id, "stopped").await;
    }
    drop(host);
    for pid in pids {
        // Not our children: init reaps them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "stopped, but server process {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A stored spawn in `submitting`, as a host killed mid-submit leaves it.
fn submitting_record(
    id: &str,
    request_id: &str,
    cmd: &[&str],
    started: bool,
) -> wasmspawner_host::model::Spawn {
    use wasmspawner_host::model::{Spawn, SpawnState, User, Value};
    let now = chrono::Utc::now();
    Spawn {
        id: id.into(),
        user: User {
            name: "alice".into(),
            groups: vec![],
            admin: false,
        },
        server_name: request_id.into(),
        request_id: request_id.into(),
        instance: "local".into(),
        state: SpawnState::Submitting,
        reason: None,
        progress: 10,
        raw_options: Default::default(),
        options: Some([("interface".to_string(), Value::Text("lab".into()))].into()),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env_names: vec![],
        job_id: None,
        plugin_state: String::new(),
        exec_host: None,
        expected_start: None,
        queue_position: None,
        time_limit_secs: None,
        end_time: None,
        host: None,
        port: None,
        tunnel_target: None,
        exit_code: None,
        unknown_polls: 0,
        flagged: None,
        created_at: now,
        updated_at: now,
        state_since: now,
        submit_started_at: started.then_some(now),
        fingerprint: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_caught_in_submitting_are_submitted_once_or_fail_with_the_reason() {
    let setup = common::setup(&local_config(""));
    let state = setup.config.state_dir.clone();
    std::fs::create_dir_all(&state).unwrap();
    let script = server_script(setup.dir.path());
    let never = setup.dir.path().join("never").display().to_string();
    let cmd = ["python3", script.as_str(), never.as_str()];
    {
        let store = wasmspawner_host::store::Store::open(&state).unwrap();
        // A: its submit never started, the hub's environment kept.
        store
            .save(
                &submitting_record("sp-crasheda", "a", &cmd, false),
                Some("ab".repeat(32).as_str()),
            )
            .unwrap();
        // B: never started, the environment gone (an older host's store).
        store
            .save(
                &submitting_record("sp-crashedb", "b", &cmd, false),
                Some("ab".repeat(32).as_str()),
            )
            .unwrap();
        // C: its submit had started (the local plugin: found by spawn tag).
        store
            .save(
                &submitting_record("sp-crashedc", "c", &cmd, true),
                Some("ab".repeat(32).as_str()),
            )
            .unwrap();
    }
    let pending = state.join("pending-env");
    std::fs::create_dir_all(&pending).unwrap();
    for id in ["sp-crasheda", "sp-crashedc"] {
        std::fs::write(
            pending.join(format!("{id}.json")),
            json!([["JUPYTERHUB_API_TOKEN", format!("hub-token-{id}")]]).to_string(),
        )
        .unwrap();
    }
    let h = start_host_with(setup).await;
    for id in ["sp-crasheda", "sp-crashedc"] {
        let s = h.wait_spawn(id, 20, |s| s["state"] == "running").await;
        let pid = pid_of(s["job_id"].as_str().unwrap());
        let _k = KillOnDrop(pid);
        // The hub's environment reached the job; the callback token is new.
        let deadline = Instant::now() + Duration::from_secs(5);
        let tok = loop {
            if let Some(t) = env_of(pid, "JUPYTERHUB_API_TOKEN") {
                break t;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(tok, format!("hub-token-{id}"));
        let cb = env_of(pid, "WASMSPAWNER_CALLBACK_TOKEN").unwrap();
        assert!(h.service.callback_token_ok(id, &cb));
        // Submitted once.
        let starts = h
            .setup
            .audit()
            .iter()
            .filter(|r| {
                r["capability"] == "detached.start" && r["event"] == "start" && r["spawn_id"] == id
            })
            .count();
        assert_eq!(starts, 1, "{id}");
        // The kept environment is gone once submitted.
        assert!(!pending.join(format!("{id}.json")).exists());
        h.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    }
    let s = h.api("GET", "/v1/spawns/sp-crashedb", None).await.json();
    assert_eq!(s["state"], "failed", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("environment for it is gone"),
        "{s}"
    );
    assert!(h
        .setup
        .audit()
        .iter()
        .all(|r| !(r["capability"] == "detached.start" && r["spawn_id"] == "sp-crashedb")));
    for id in ["sp-crasheda", "sp-crashedc"] {
        h.wait_spawn(id, 20, |s| s["state"] == "stopped").await;
    }
}

/// The live processes whose environment names spawn `id`.
fn processes_of(id: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if gone(pid) {
            continue;
        }
        if env_of(pid, "WASMSPAWNER_SPAWN_ID").as_deref() == Some(id) {
            out.push(pid);
        }
    }
    out
}

/// kill -9 of the real `wasmspawner serve` at a random moment of a burst of
/// starts, then a restart: every accepted spawn is known, none failed, each
/// has exactly one live server process (no duplicate), every process was
/// audited before it started, and after a stop none is left (no orphan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_leaves_no_orphan_and_no_duplicate() {
    // The issue's storm: 20 runs of a 50-spawn burst.
    const RUNS: usize = 20;
    const BURST: usize = 50;
    for run in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        eprintln!("run {run}: {}", dir.path().display());
        let port = free_port();
        let config = write_config(dir.path(), port);
        let log = dir.path().join("host.log");
        let url = format!("http://127.0.0.1:{port}");
        let script = server_script(dir.path());
        let never = dir.path().join("never").display().to_string();
        let host = serve(&config, &log).await;
        wait_healthy(&url).await;
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut posts = Vec::new();
        for i in 0..BURST {
            let (url, script, never, accepted) =
                (url.clone(), script.clone(), never.clone(), accepted.clone());
            posts.push(tokio::spawn(async move {
                let body = start_body(&format!("u{i}"), "", "r", &["python3", &script, &never]);
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    let rest = url.strip_prefix("http://").unwrap().to_string();
                    let Ok(mut s) = tokio::net::TcpStream::connect(&rest).await else { return None };
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let payload = body.to_string();
                    let req = format!(
                        "POST /v1/spawns HTTP/1.1\r\nHost: {rest}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{payload}",
                        payload.len()
                    );
                    s.write_all(req.as_bytes()).await.ok()?;
                    let mut raw = Vec::new();
                    s.read_to_end(&mut raw).await.ok()?;
                    Some(String::from_utf8_lossy(&raw).to_string())
                })
                .await;
                if let Ok(Some(text)) = r {
                    if text.starts_with("HTTP/1.1 201") {
                        let body = text.split_once("\r\n\r\n").unwrap().1;
                        let v: Value = serde_json::from_str(body).unwrap();
                        accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                    }
                }
            }));
        }
        // A random moment of the burst.
        let wait = rand::random::<u64>() % 300;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        drop(host); // SIGKILL
        for p in posts {
            let _ = p.await;
        }
        let accepted = accepted.lock().unwrap().clone();
        let host = serve(&config, &log).await;
        wait_healthy(&url).await;
        let list = api(&url, "GET", "/v1/spawns?limit=1000", None).await.json();
        let known: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for id in &accepted {
            assert!(
                known.contains(id),
                "run {run}: accepted spawn {id} unknown after the restart"
            );
        }
        // Every known spawn settles with its one server; none failed.
        for id in &known {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let s = api(&url, "GET", &format!("/v1/spawns/{id}"), None)
                    .await
                    .json();
                let st = s["state"].as_str().unwrap().to_string();
                assert_ne!(st, "failed", "run {run} (kill after {wait} ms): {s}");
                if st == "running" || st == "ready" {
                    break;
                }
                assert!(Instant::now() < deadline, "run {run}: {s}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let audit =
            std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap_or_default();
        let starts = |id: &str| {
            audit
                .lines()
                .filter(|l| {
                    l.contains("\"detached.start\"")
                        && l.contains("\"event\":\"start\"")
                        && l.contains(id)
                })
                .count()
        };
        let mut all = Vec::new();
        for id in &known {
            // Give a resubmitted job a moment to replace an ended one.
            let deadline = Instant::now() + Duration::from_secs(5);
            let procs = loop {
                let p = processes_of(id);
                if p.len() == 1 || Instant::now() > deadline {
                    break p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(
                procs.len(),
                1,
                "run {run}: spawn {id} has {} live server processes",
                procs.len()
            );
            assert!(
                starts(id) >= 1,
                "run {run}: spawn {id}'s process was never audited"
            );
            all.extend(procs);
        }
        let _cleanup: Vec<KillOnDrop> = all.iter().map(|p| KillOnDrop(*p)).collect();
        for id in &known {
            api(&url, "DELETE", &format!("/v1/spawns/{id}"), None).await;
        }
        for id in &known {
            wait_state(&url, id, "stopped").await;
        }
        drop(host);
        for id in &known {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !processes_of(id).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "run {run}: spawn {id} stopped but its process runs on"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!(
            "run {run}: killed after {wait} ms; {} accepted, {} known, 0 orphans, 0 duplicates",
            accepted.len(),
            known.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_with_an_event_stream_open_and_servers_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let script = server_script(dir.path());
    let never = dir.path().join("never").display().to_string();
    let mut host = serve(&config, &dir.path().join("host.log")).await;
    wait_healthy(&url).await;
    let r = api(
        &url,
        "POST",
        "/v1/spawns",
        Some(&start_body("alice", "", "a", &["python3", &script, &never])),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let s = wait_state(&url, &id, "running").await;
    let pid = pid_of(s["job_id"].as_str().unwrap());
    let _cleanup = KillOnDrop(pid);
    // A hub following the spawn.
    let events_url = format!("{url}/v1/spawns/{id}/events");
    let follower = tokio::spawn(async move { read_events(&events_url, &["ready"], 60).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    unsafe {
        libc::kill(host.0.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = host.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the host did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    follower.abort();
    // The job is not the host's to end: it still runs (and is found again on restart).
    assert!(!gone(pid));
    let _host = serve(&config, &dir.path().join("host.log")).await;
    wait_healthy(&url).await;
    let s = api(&url, "GET", &format!("/v1/spawns/{id}"), None)
        .await
        .json();
    assert_eq!(s["state"], "running", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_submit_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // probe "sleep": form and submit take 2 s each.
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n[instances.probe]\nplugin = \"{}\"\n[instances.probe.config]\nbehavior = \"sleep\"\nseconds = \"2\"\n[[instances.probe.grants.programs]]\nprogram = \"sleep\"\nargs = [\"*\"]\nphases = [\"form\", \"validate\", \"submit\", \"status\", \"cancel\"]\n",
            dir.path().join("state").display(),
            token.display(),
            common::plugin_wasm("probe").display()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("host.log");
    let mut host = serve(&config, &log).await;
    wait_healthy(&url).await;
    let body =
        json!({"user": {"name": "alice"}, "instance": "probe", "request_id": "r", "cmd": ["x"]});
    let r = api(&url, "POST", "/v1/spawns", Some(&body)).await;
    assert_eq!(r.json()["state"], "submitting", "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    unsafe {
        libc::kill(host.0.id() as i32, libc::SIGTERM);
    }
    let status = host.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let _host = serve(&config, &log).await;
    wait_healthy(&url).await;
    let s = api(&url, "GET", &format!("/v1/spawns/{id}"), None)
        .await
        .json();
    assert_eq!(s["job_id"], format!("probe-{id}"), "{s}");
    assert!(
        matches!(s["state"].as_str(), Some("queued" | "running")),
        "{s}"
    );
}

/// A batch plugin of API 0.2 answers `find-jobs` after a host killed during
/// its submit: the job that exists is adopted (no second submit), a spawn
/// provably without one is submitted again once, one whose environment is
/// gone fails with the reason; all from one `squeue --name=…` for the lot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_plugin_finds_the_jobs_of_spawns_caught_in_their_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let log = tmp.path().join("log");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&log).unwrap();
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let l = log.display();
    // squeue: the find query (`--name=`) lists the job of spawn D only;
    // status lists D's and the new job, pending.
    script(
        "squeue",
        &format!(
            "echo \"$@\" >> {l}/squeue.argv\ncase \"$*\" in *--name=*) echo '555|jupyterhub-sp-crashedd|PENDING';;\n*) echo '555|PENDING|n/a|n/a|N/A|1:00:00|1:00:00|Priority'; echo '777|PENDING|n/a|n/a|N/A|1:00:00|1:00:00|Priority';; esac\n"
        ),
    );
    script(
        "sbatch",
        &format!("echo \"$@\" >> {l}/sbatch.argv\n/bin/cat > /dev/null\necho '777'\n"),
    );
    script("scancel", &format!("echo \"$@\" >> {l}/scancel.argv\n"));
    let setup = common::setup(&format!(
        r#"
[instances.slurm]
plugin = "{{plugin:slurm}}"
search_path = ["{bin}"]
[instances.slurm.lifecycle]
poll_interval_secs = 1
[[instances.slurm.grants.programs]]
program = "sbatch"
spawn_env = true
phases = ["submit"]
[[instances.slurm.grants.programs]]
program = "squeue"
phases = ["status"]
run_as = "host"
[[instances.slurm.grants.programs]]
program = "scancel"
phases = ["cancel"]
"#,
        bin = bin.display()
    ));
    let state = setup.config.state_dir.clone();
    std::fs::create_dir_all(&state).unwrap();
    let record = |id: &str, rid: &str| {
        let mut s = submitting_record(id, rid, &["jupyterhub-singleuser"], true);
        s.instance = "slurm".into();
        s.options = Default::default();
        s
    };
    {
        let store = wasmspawner_host::store::Store::open(&state).unwrap();
        for (id, rid) in [
            ("sp-crashedd", "d"),
            ("sp-crashede", "e"),
            ("sp-crashedf", "f"),
        ] {
            store
                .save(&record(id, rid), Some("ab".repeat(32).as_str()))
                .unwrap();
        }
    }
    let pending = state.join("pending-env");
    std::fs::create_dir_all(&pending).unwrap();
    for id in ["sp-crashedd", "sp-crashede"] {
        std::fs::write(
            pending.join(format!("{id}.json")),
            json!([["JUPYTERHUB_API_TOKEN", format!("hub-token-{id}")]]).to_string(),
        )
        .unwrap();
    }
    let h = start_host_with(setup).await;
    // D: adopted, never submitted again.
    let d = h
        .wait_spawn("sp-crashedd", 20, |s| s["state"] == "queued")
        .await;
    assert_eq!(d["job_id"], "555", "{d}");
    assert!(!pending.join("sp-crashedd.json").exists());
    // The poll that follows keeps the job's time limit (squeue's %l) on
    // the spawn the API shows.
    h.wait_spawn("sp-crashedd", 20, |s| s["time_limit_secs"] == 3600)
        .await;
    // E: provably no job: submitted again, once.
    let e = h
        .wait_spawn("sp-crashede", 20, |s| s["state"] == "queued")
        .await;
    assert_eq!(e["job_id"], "777", "{e}");
    let sbatch = std::fs::read_to_string(log.join("sbatch.argv")).unwrap_or_default();
    assert_eq!(
        sbatch.lines().count(),
        1,
        "one submit, for E only: {sbatch}"
    );
    // F: nothing found and the hub's environment gone: failed, said why.
    let f = h
        .wait_spawn("sp-crashedf", 20, |s| s["state"] == "failed")
        .await;
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("environment for it is gone"),
        "{f}"
    );
    // One find query for the three spawns.
    let finds = std::fs::read_to_string(log.join("squeue.argv")).unwrap();
    let finds: Vec<&str> = finds.lines().filter(|l| l.contains("--name=")).collect();
    assert_eq!(finds.len(), 1, "{finds:?}");
    for id in ["sp-crashedd", "sp-crashede", "sp-crashedf"] {
        assert!(finds[0].contains(&format!("jupyterhub-{id}")), "{finds:?}");
    }
}
