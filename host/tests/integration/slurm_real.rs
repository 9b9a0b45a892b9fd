//! The Slurm plugin against a real one-node Slurm (tests/slurm/slurm-up.sh),
//! through the `wasmspawner plugin` CLI, submitting as a non-root user with
//! the operator's run-as prefix (`runuser -u USER --`).
//!
//! The cluster is found through `WASMSPAWNER_SLURM_CONF` (its slurm.conf);
//! the submitting user is `WASMSPAWNER_SLURM_USER` (default `wstest`).
//! Without the variable the tests print `SKIPPED (no Slurm)` and pass on a
//! developer machine, and fail when `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common;

/// The tests share a two-core node: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    slurm_conf: String,
    user: String,
    cpus: u32,
    node: String,
    _tmp: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn cluster(test: &str) -> Option<Cluster> {
    let Some(conf) = std::env::var("WASMSPAWNER_SLURM_CONF")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        let msg = format!(
            "SKIPPED (no Slurm): {test} needs a running Slurm; start one with \
             `tests/slurm/slurm-up.sh DIR` and set WASMSPAWNER_SLURM_CONF=DIR/etc/slurm.conf"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (CI=true: the real-Slurm tests must run in CI)");
        }
        // Straight to stderr, past the test harness's capture, so it shows.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!! {msg}\n");
        return None;
    };
    let user = std::env::var("WASMSPAWNER_SLURM_USER").unwrap_or_else(|_| "wstest".into());
    let sinfo = Command::new("sinfo")
        .args(["-h", "-o", "%c %n"])
        .env("SLURM_CONF", &conf)
        .output()
        .expect("sinfo runs");
    let line = String::from_utf8_lossy(&sinfo.stdout).trim().to_string();
    let (cpus, node) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("sinfo printed {line:?}"));
    let tmp = tempfile::tempdir().unwrap();
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-state/slurm_real");
    let config = tmp.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[instances.slurm]
plugin = "{wasm}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
{tables}"#,
            state = state.display(),
            wasm = common::plugin_wasm("slurm").display(),
            tables = common::slurm_tables("slurm", &conf),
        ),
    )
    .unwrap();
    Some(Cluster {
        slurm_conf: conf,
        user,
        cpus: cpus.parse().unwrap(),
        node: node.to_string(),
        _tmp: tmp,
        config,
        state,
    })
}

impl Cluster {
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmspawner"))
            .arg("plugin")
            .arg(args[0])
            .args(["-c", self.config.to_str().unwrap(), "-p", "slurm"])
            .args(&args[1..])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wasmspawner plugin {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap()
    }

    fn submit(&self, cores: u32, cmd: &[&str], env: &[(&str, &str)]) -> String {
        let cores = format!("nprocs={cores}");
        let mut args = vec!["submit", "--user", &self.user, "-o", &cores];
        for (name, _) in env {
            args.extend(["--env", name]);
        }
        args.push("--");
        args.extend(cmd);
        let v = self.cli(&args, env);
        v["job_id"].as_str().unwrap().to_string()
    }

    fn status(&self, ids: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["status", "--user", &self.user];
        args.extend(ids);
        self.cli(&args, &[]).as_array().unwrap().clone()
    }

    fn cancel(&self, id: &str) {
        self.cli(&["cancel", "--user", &self.user, id], &[]);
    }

    /// squeue calls recorded in the audit log so far.
    fn squeue_calls(&self) -> usize {
        std::fs::read_to_string(self.state.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            // One start record per squeue run (an end record follows it).
            .filter(|l| l.contains("\"program\":\"squeue\"") && l.contains("\"event\":\"start\""))
            .count()
    }

    fn wait_for(&self, id: &str, what: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status(&[id]).remove(0);
            if s["state"] == what {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} not {what} after {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cleanup(&self, ids: &[String]) {
        let _ = Command::new("scancel")
            .args(ids)
            .env("SLURM_CONF", &self.slurm_conf)
            .status();
    }
}

#[test]
fn pending_running_done_with_the_spawn_env() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = cluster("pending_running_done_with_the_spawn_env") else {
        return;
    };
    let t0 = Instant::now();
    // A fills the node, so B waits for it.
    let marker = format!("/tmp/wasmspawner-slurm-env-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let script = format!("echo \"$WS_SLURM_TEST_TOKEN\" > {marker}; sleep 4");
    let a = c.submit(
        c.cpus,
        &["/bin/sh", "-c", &script],
        &[("WS_SLURM_TEST_TOKEN", "token-from-the-hub")],
    );
    let b = c.submit(1, &["/bin/sleep", "2"], &[]);
    let submitted = t0.elapsed();

    let (mut b_pending, mut b_running, mut a_running) = (false, false, false);
    let start = Instant::now();
    let mut timeline = Vec::new();
    loop {
        let s = c.status(&[&a, &b]);
        let line = format!(
            "{:>5} ms  A {}  B {}",
            start.elapsed().as_millis(),
            s[0]["state"],
            s[1]["state"]
        );
        if timeline.last() != Some(&line[10..].to_string()) {
            eprintln!("{line}");
        }
        timeline.push(line[10..].to_string());
        if s[0]["state"] == "running" {
            a_running = true;
            assert_eq!(s[0]["host"], c.node.as_str(), "{s:?}");
            if s[1]["state"] == "pending" {
                b_pending = true;
            }
        }
        if s[1]["state"] == "running" {
            b_running = true;
        }
        assert_ne!(s[0]["state"], "unknown", "{s:?}");
        assert_ne!(s[1]["state"], "unknown", "{s:?}");
        // `CG` (completing) is already done for the spawn, but its exit
        // code comes with the final record: wait for that.
        let settled = |j: &serde_json::Value| {
            j["state"] == "done" && j["reason"].as_str() != Some("completing")
        };
        if settled(&s[0]) && settled(&s[1]) {
            assert_eq!(s[0]["exit_code"], 0, "{s:?}");
            assert_eq!(s[1]["exit_code"], 0, "{s:?}");
            assert!(
                s[1]["reason"].as_str().unwrap().contains("completed"),
                "{s:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{timeline:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(a_running && b_pending && b_running, "{timeline:?}");
    let seen = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        seen.trim(),
        "token-from-the-hub",
        "the job gets the spawn's environment"
    );
    let _ = std::fs::remove_file(&marker);
    eprintln!(
        "real Slurm: 2 submits {:?}, pending → running → done in {:?}",
        submitted,
        start.elapsed()
    );
}

#[test]
fn cancel_a_running_job_and_again_after_it_ended() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = cluster("cancel_a_running_job_and_again_after_it_ended") else {
        return;
    };
    let id = c.submit(1, &["/bin/sleep", "300"], &[]);
    let running = c.wait_for(&id, "running", Duration::from_secs(30));
    // The job's time limit and end, from squeue's %l and %L (API 0.2).
    let limit = running["time_limit_secs"].as_u64().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ends = running["ends_at"].as_u64().unwrap_or(0);
    assert!(limit >= 60, "{running}");
    assert!(ends > now && ends <= now + limit + 5, "{running}");
    let t = Instant::now();
    c.cancel(&id);
    let s = c.wait_for(&id, "done", Duration::from_secs(30));
    eprintln!("real Slurm: cancel → done in {:?}", t.elapsed());
    // Right after scancel Slurm may show COMPLETING (done: completing)
    // before CANCELLED.
    let reason = |s: &serde_json::Value| s["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason(&s).contains("cancelled") || reason(&s).contains("completing"),
        "{s}"
    );
    let start = Instant::now();
    while !reason(&c.status(&[&id])[0]).contains("cancelled") {
        assert!(start.elapsed() < Duration::from_secs(20), "never CANCELLED");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Cancelling a finished job is not an error.
    c.cancel(&id);

    // A job whose command fails is done and says so.
    let id = c.submit(1, &["/bin/sh", "-c", "exit 3"], &[]);
    let s = c.wait_for(&id, "done", Duration::from_secs(30));
    assert!(s["reason"].as_str().unwrap().starts_with("failed"), "{s}");
}

#[test]
fn twenty_jobs_in_one_squeue() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = cluster("twenty_jobs_in_one_squeue") else {
        return;
    };
    let t = Instant::now();
    let ids: Vec<String> = (0..20)
        .map(|_| c.submit(1, &["/bin/sleep", "60"], &[]))
        .collect();
    let submit_time = t.elapsed();
    let before = c.squeue_calls();
    let t = Instant::now();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let states = c.status(&refs);
    let status_time = t.elapsed();
    assert_eq!(c.squeue_calls() - before, 1, "one squeue for 20 jobs");
    assert_eq!(states.len(), 20);
    let running = states.iter().filter(|s| s["state"] == "running").count();
    let pending = states.iter().filter(|s| s["state"] == "pending").count();
    assert_eq!(running + pending, 20, "{states:?}");
    assert!(running <= c.cpus as usize, "{states:?}");
    for (s, id) in states.iter().zip(&ids) {
        assert_eq!(s["job_id"], id.as_str());
    }
    eprintln!(
        "real Slurm: 20 submits in {submit_time:?}; status of 20 jobs in {status_time:?} ({running} running, {pending} pending)"
    );
    c.cleanup(&ids);
    for id in &ids {
        c.wait_for(id, "done", Duration::from_secs(30));
    }
}
