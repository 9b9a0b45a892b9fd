//! The real `wasmspawner serve` binary killed with SIGKILL mid-spawn and
//! started again: every spawn is recovered, nothing is submitted twice.

mod common;
mod service_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(url.strip_prefix("http://").unwrap()),
        )
        .await
        {
            use tokio::io::AsyncWriteExt;
            let _ = s.shutdown().await;
            if request("GET", &format!("{url}/healthz"), None, None)
                .await
                .status
                == 200
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the host did not come up");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_caught_in_submitting_fails_and_is_not_submitted_again() {
    let setup = common::setup(&local_config(""));
    std::fs::create_dir_all(&setup.config.state_dir).unwrap();
    // What a host killed between recording "submitting" and the plugin's
    // answer leaves behind.
    let now = chrono::Utc::now();
    let record: wasmspawner_host::model::Spawn = serde_json::from_value(json!({
        "id": "sp-crashed", "user": {"name": "alice", "groups": [], "admin": false},
        "server_name": "", "request_id": "r", "instance": "local", "state": "submitting",
        "reason": null, "progress": 10, "raw_options": {}, "options": {}, "cmd": ["python3"],
        "env_names": [], "job_id": null, "plugin_state": "", "exec_host": null,
        "expected_start": null, "host": null, "port": null, "exit_code": null,
        "unknown_polls": 0, "flagged": null, "created_at": now, "updated_at": now, "state_since": now
    }))
    .unwrap();
    {
        let store = wasmspawner_host::store::Store::open(&setup.config.state_dir).unwrap();
        store.save(&record, Some("ab".repeat(32).as_str())).unwrap();
    }
    let h = start_host_with(setup).await;
    let s = h.api("GET", "/v1/spawns/sp-crashed", None).await.json();
    assert_eq!(s["state"], "failed", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("not submitted again"),
        "{s}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h
        .setup
        .audit()
        .iter()
        .all(|r| r["capability"] != "detached.start"));
    // The same request again is the same (failed) spawn; a new request id starts anew.
    let r = h
        .api(
            "POST",
            "/v1/spawns",
            Some(&json!({
                "user": {"name": "alice"}, "instance": "local", "request_id": "r2",
                "options": {"interface": ["lab"]}, "cmd": ["python3", "-c", "pass"]
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
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
