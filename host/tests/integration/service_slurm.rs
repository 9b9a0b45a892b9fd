//! A full spawn through the spawn service and the Slurm plugin on a real
//! one-node Slurm: submit as a non-root user, the job starts a server that
//! reports its port with the per-spawn token, the server answers, stop
//! cancels the job. Needs WASMSPAWNER_SLURM_CONF (tests/slurm/slurm-up.sh).

use crate::common;
use crate::service_common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use service_common::{start_host_with, SERVER_PY};

fn slurm_conf() -> Option<String> {
    match std::env::var("WASMSPAWNER_SLURM_CONF")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(c) => Some(c),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the real-Slurm spawn test: set WASMSPAWNER_SLURM_CONF")
        }
        None => {
            eprintln!("\n!!!!! SKIPPED (no Slurm): start tests/slurm/slurm-up.sh DIR and set WASMSPAWNER_SLURM_CONF\n");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spawn_on_real_slurm_reports_its_port_and_stops() {
    let Some(conf) = slurm_conf() else { return };
    let user = std::env::var("WASMSPAWNER_SLURM_USER").unwrap_or_else(|_| "wstest".into());
    // The job runs as the user: the server script must be readable by it.
    let shared = tempfile::Builder::new()
        .prefix("ws-slurm-spawn")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = shared.path().join("server.py");
    std::fs::write(&script, SERVER_PY).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();

    let setup = common::setup(&format!(
        r#"
[instances.slurm]
plugin = "{{plugin:slurm}}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
{tables}[instances.slurm.lifecycle]
poll_interval_secs = 1
fast_poll_secs = 0.5
start_timeout_secs = 60
# The test server reports 127.0.0.1; Slurm names the node by its host name.
callback_hosts = ["127.0.0.1"]
"#,
        tables = common::slurm_tables("slurm", &conf),
    ));
    let host = start_host_with(setup).await;
    let t0 = Instant::now();
    let body = serde_json::json!({
        "user": {"name": user, "groups": [], "admin": false},
        "server_name": "",
        "instance": "slurm",
        "request_id": "slurm-1",
        "options": {"nprocs": ["1"]},
        "env": {"JUPYTERHUB_API_TOKEN": "hub-token-through-slurm"},
        "cmd": ["/usr/bin/python3", script.display().to_string()],
    });
    let id = host.start(&body).await;
    let s = host
        .wait_spawn(&id, 90, |s| s["state"] == "ready" || s["state"] == "failed")
        .await;
    assert_eq!(s["state"], "ready", "{s}");
    eprintln!(
        "real Slurm: POST /v1/spawns → ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // The server in the job answers, and got the hub's token through the job's environment.
    let url = format!("http://{}:{}/", s["host"].as_str().unwrap(), s["port"]);
    let page = service_common::request("GET", &url, None, None).await;
    assert_eq!(page.status, 200);
    let page = page.json();
    assert_eq!(page["spawn_id"], id.as_str());
    assert_eq!(page["api_token"], "hub-token-through-slurm");

    let r = host.api("DELETE", &format!("/v1/spawns/{id}"), None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = host.wait_spawn(&id, 60, |s| s["state"] == "stopped").await;
    assert_eq!(s["state"], "stopped");
    // The job is gone from the queue.
    let job = s["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("squeue")
            .args(["-h", "-j", &job, "-o", "%T"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        let st = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if st.is_empty() || st == "CANCELLED" {
            break;
        }
        assert!(Instant::now() < deadline, "job {job} still {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
