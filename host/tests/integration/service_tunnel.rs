//! A server on a "non-routable node" (bound to loopback only) reached by the
//! hub through an SSH tunnel the host opens when the server reports ready,
//! re-opens when its ssh dies, re-creates after a host restart (same local
//! port), and closes on stop. Needs the test sshd (WASMSPAWNER_TEST_SSH).

use crate::common;
use crate::service_common;

use std::time::Duration;

use service_common::{local_config_with, server_script, start_body, start_host_with, Host};

/// A host whose state lives in `state` (so a "restart" finds it again),
/// keeping its tunnels: `Daemon::start` runs the tunnel keeper and, for a
/// callback tunnel, the callback-only listener it forwards to, as `serve`
/// does.
async fn host_on(state: &std::path::Path, body: &str) -> Host {
    host_without_tunnels(state, body).await
}

/// A host for the config `body` in `state` (its tunnel keeper included).
async fn host_without_tunnels(state: &std::path::Path, body: &str) -> Host {
    let path = state.join("host.toml");
    let cache =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache");
    let mut text = format!(
        "state_dir = \"{}\"\ncache_dir = \"{}\"\n",
        state.join("state").display(),
        cache.display()
    );
    let mut body = body.to_string();
    body = body.replace(
        "{plugin:local}",
        &common::plugin_wasm("local").display().to_string(),
    );
    text.push_str(&body);
    std::fs::write(&path, text).unwrap();
    let config = wasmspawner_host::config::Config::load(&path).unwrap();
    start_host_with(common::Setup {
        dir: tempfile::tempdir().unwrap(),
        config,
    })
    .await
}

/// The response to `GET path` on 127.0.0.1:`port`, if it is a 200.
async fn get_path(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        (out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")).then_some(out)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()
        .flatten()
}

async fn get(port: u16) -> Option<String> {
    get_path(port, "/").await
}

/// The host's `GET /healthz` answers on `port`.
async fn health(port: u16) -> bool {
    get_path(port, "/healthz").await.is_some()
}

/// The job callback answers on `port` (a 401 for a made-up spawn and token).
async fn callback_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let body = r#"{"port": 8888}"#;
        s.write_all(format!("POST /v1/spawns/none/ready HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out.starts_with("HTTP/1.0 401") || out.starts_with("HTTP/1.1 401"))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// PIDs of processes whose command line contains `needle`.
fn ssh_pids(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// PIDs of ssh processes forwarding local `port`.
fn tunnel_pids(port: u16) -> Vec<i32> {
    ssh_pids(&format!("127.0.0.1:{port}:"))
}

/// Waits up to 20 s for `ok`.
async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_per_ready_server_survives_its_ssh_and_a_host_restart() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    let extra = format!(
        "{}[instances.local.tunnel]\nvia = \"127.0.0.1\"\n",
        common::sshd_table(&dir, "local")
    );
    // The servers and the gateway are this host: loopback is the node.
    let body = local_config_with(
        "poll_interval_secs = 0.5\nfast_poll_secs = 0.2\nallow_loopback = true",
        &extra,
    );
    let state = tempfile::tempdir().unwrap();
    let host = host_on(state.path(), &body).await;
    let script = server_script(state.path());

    let id = host
        .start(&start_body("alice", "", "t1", &["python3", &script]))
        .await;
    let s = host.wait_spawn(&id, 60, |s| s["state"] == "ready").await;
    let local: u16 = s["port"].as_u64().unwrap() as u16;
    let target = s["tunnel_target"].as_str().unwrap().to_string();
    assert_eq!(s["host"], "127.0.0.1");
    assert!(
        target.starts_with("127.0.0.1:") && !target.ends_with(&format!(":{local}")),
        "{s}"
    );
    let page = get(local)
        .await
        .expect("the server answers through the tunnel");
    assert!(page.contains(&id), "{page}");

    // The tunnel's ssh dies: it comes back on the same port.
    for pid in tunnel_pids(local) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_for("the tunnel is back after its ssh was killed", async || {
        get(local).await.is_some_and(|p| p.contains(&id))
    })
    .await;

    // The host restarts (its tunnels die with it), and meanwhile a local
    // user takes the spawn's port: the tunnel is not claimed, the spawn is
    // flagged, and re-tries back off.
    drop(host);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tunnel_pids(local).is_empty(), "tunnels outlived the host");
    let squatter = std::net::TcpListener::bind(("127.0.0.1", local)).unwrap();
    let host = host_on(state.path(), &body).await;
    wait_for("the spawn is flagged: its tunnel is not open", async || {
        let s = host
            .api("GET", &format!("/v1/spawns/{id}"), None)
            .await
            .json();
        s["flagged"]
            .as_str()
            .is_some_and(|f| f.contains("held by another process"))
    })
    .await;
    assert!(!host.service.tunnel_is_open(&id));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = host.service.tunnel_list().await[0].attempts;
    assert!(
        attempts <= 5,
        "{attempts} ssh starts in about 3 s: no backoff"
    );
    // The port is free again: the tunnel opens there and the flag goes.
    drop(squatter);
    wait_for("the tunnel opens once the port is free", async || {
        get(local).await.is_some_and(|p| p.contains(&id))
    })
    .await;
    let s = host
        .api("GET", &format!("/v1/spawns/{id}"), None)
        .await
        .json();
    assert_eq!(s["state"], "ready");
    assert!(s["flagged"].is_null(), "{s}");
    assert_eq!(s["port"].as_u64(), Some(local as u64));

    // Stop: the job ends and the tunnel closes.
    host.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    host.wait_spawn(&id, 30, |s| s["state"] == "stopped").await;
    wait_for("the tunnel of the stopped spawn closes", async || {
        tunnel_pids(local).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_call_back_through_a_reverse_tunnel_on_the_gateway() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    // The gateway's port for callbacks: only the reverse tunnel listens there.
    let cb_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "{}[instances.local.tunnel]\nvia = \"127.0.0.1\"\n[instances.local.tunnel.callback]\nport = {cb_port}\nbind = \"127.0.0.1\"\n",
        common::sshd_table(&dir, "local")
    );
    // The servers and the gateway are this host: loopback is the node.
    let body = local_config_with(
        "poll_interval_secs = 0.5\nfast_poll_secs = 0.2\nallow_loopback = true",
        &extra,
    );
    let state = tempfile::tempdir().unwrap();
    let host = host_on(state.path(), &body).await;
    let forward = format!("127.0.0.1:{cb_port}:127.0.0.1:");
    wait_for("the gateway forwards callbacks to the host", async || {
        callback_answers(cb_port).await
    })
    .await;
    // The gateway's port serves the job callback only: no other route, even
    // with the API token.
    assert!(
        !health(cb_port).await,
        "/healthz answers on the gateway port"
    );
    let r = service_common::request(
        "GET",
        &format!("http://127.0.0.1:{cb_port}/v1/spawns"),
        Some(service_common::TOKEN),
        None,
    )
    .await;
    assert_eq!(
        r.status, 404,
        "the spawn list on the gateway port: {}",
        r.body
    );

    let script = server_script(state.path());
    let id = host
        .start(&start_body("alice", "", "r1", &["python3", &script]))
        .await;
    let s = host.wait_spawn(&id, 60, |s| s["state"] == "ready").await;
    let pid = service_common::pid_of(s["job_id"].as_str().unwrap());
    assert_eq!(
        service_common::env_of(pid, "WASMSPAWNER_CALLBACK_URL").as_deref(),
        Some(format!("http://127.0.0.1:{cb_port}/v1/spawns/{id}/ready").as_str()),
        "the job must be told the gateway's address, not the host's"
    );

    // The tunnel's ssh dies: it comes back on the same gateway port.
    let pids = ssh_pids(&forward);
    assert_eq!(pids.len(), 1, "one callback tunnel per instance: {pids:?}");
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    wait_for(
        "the callback tunnel is back after its ssh was killed",
        async || {
            let now = ssh_pids(&forward);
            now.len() == 1 && now[0] != pids[0] && callback_answers(cb_port).await
        },
    )
    .await;
    assert!(
        host.service
            .tunnel_list()
            .await
            .iter()
            .any(|t| t.reverse && t.restarts == 1),
        "the restart is counted"
    );

    host.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    host.wait_spawn(&id, 30, |s| s["state"] == "stopped").await;
    // The host stops: its tunnels end with it.
    drop(host);
    wait_for("the callback tunnel ends with the host", async || {
        ssh_pids(&forward).is_empty()
    })
    .await;
}

/// Through the gateway's tunnel the caller's address is the gateway's sshd,
/// not the node: a callback without a host makes the host ask the scheduler,
/// and a host the instance's rule refuses fails the spawn, never ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunneled_instance_never_makes_a_refused_host_ready() {
    let state = tempfile::tempdir().unwrap();
    let known_hosts = state.path().join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    // No regular poll within the test: only the callback's own question.
    let body = local_config_with(
        "poll_interval_secs = 3600\nfast_poll_secs = 3600",
        &format!(
            "[instances.local.ssh]\nknown_hosts = \"{}\"\n[instances.local.tunnel]\nvia = \"gateway.invalid\"\n[instances.local.tunnel.callback]\nport = 9571\n",
            known_hosts.display()
        ),
    );
    let host = host_without_tunnels(state.path(), &body).await;
    let script = server_script(state.path());
    let never = state.path().join("never");
    let id = host
        .start(&start_body(
            "alice",
            "",
            "h1",
            &["python3", &script, never.to_str().unwrap()],
        ))
        .await;
    let s = host.wait_spawn(&id, 30, |s| s["job_id"].is_string()).await;
    assert!(s["exec_host"].is_null(), "{s}");
    let pid = service_common::pid_of(s["job_id"].as_str().unwrap());
    let _cleanup = service_common::KillOnDrop(pid);
    assert_eq!(
        service_common::env_of(pid, "WASMSPAWNER_CALLBACK_URL").as_deref(),
        Some(format!("http://gateway.invalid:9571/v1/spawns/{id}/ready").as_str())
    );
    let token = service_common::env_of(pid, "WASMSPAWNER_CALLBACK_TOKEN").unwrap();
    let ready = format!("{}/v1/spawns/{id}/ready", host.url);

    // The callback names no host: the host asks the scheduler where the job
    // runs at once (the callback host rule holds from the first moment). The
    // local plugin says 127.0.0.1, which a tunneled instance refuses (the
    // gateway's own services) unless the operator allows loopback: the spawn
    // fails with that reason, and no callback can make it ready after that.
    let r = service_common::request(
        "POST",
        &ready,
        Some(&token),
        Some(&serde_json::json!({"port": 8888})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "callback_not_accepted");
    // The ended spawn's token is gone: naming another host changes nothing.
    let r = service_common::request(
        "POST",
        &ready,
        Some(&token),
        Some(&serde_json::json!({"port": 8888, "host": "node1"})),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let s = host.wait_spawn(&id, 10, |s| s["state"] == "failed").await;
    let reason = s["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("127.0.0.1") && reason.contains("allow_loopback"),
        "{s}"
    );
    assert!(s["port"].is_null(), "{s}");
}
