//! Spawn service numbers, printed (not asserted):
//! 1. time from a burst of 1 000 `POST /v1/spawns` to all queued;
//! 2. scheduler commands per poll interval at 1 000 running spawns;
//! 3. with 10 000 tracked spawns: recovery time at startup, API latency
//!    p50/p99 (`GET /v1/spawns/{id}`, `GET /v1/spawns?user=`, a list page
//!    first and mid-table), process RSS;
//! 4. with 100 000 stored spawns (90 000 ended): recovery time, RSS, and
//!    `GET /v1/spawns/{id}` latency.
//!
//! The scheduler is the `probe` test plugin in `run` mode: every submit and
//! every `status` call runs one real program (`echo`) through the gate, like a
//! scheduler plugin running `sbatch` / one `squeue` for all jobs.
//!
//! Run: `cargo xtask plugins && cargo bench -p wasmspawner --bench service`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pct, request, rss_mib, TOKEN};
use serde_json::json;
use wasmspawner_host::config::Config;
use wasmspawner_host::daemon::Daemon;
use wasmspawner_host::http::auth::Token;
use wasmspawner_host::model::{Spawn, SpawnState, User, Value};
use wasmspawner_host::service::Service;

const BURST: usize = 1000;
const TRACKED: usize = 10_000;
const STORED: usize = 100_000;
const POLL_SECS: f64 = 1.0;

struct Host {
    addr: String,
    service: Arc<Service>,
    daemon: Daemon,
}

impl Host {
    fn stop(self) {
        drop(self.daemon);
    }
    fn count(&self, st: SpawnState) -> u64 {
        self.service.metrics()["spawns"][st.as_str()]
            .as_u64()
            .unwrap()
    }
    fn counter(&self, key: &str) -> u64 {
        self.service.metrics()["instances"]["sched"][key]
            .as_u64()
            .unwrap_or(0)
    }
}

async fn start(config: &Config) -> (Host, Duration) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::start(config.clone(), listener, Token::from_value(TOKEN))
        .await
        .unwrap();
    let recovery = daemon.recovered_in;
    (
        Host {
            addr: daemon.local.to_string(),
            service: daemon.service.clone(),
            daemon,
        },
        recovery,
    )
}

/// Waits until `n` spawns are in state `st` or a later one of the way to ready.
async fn wait_all(h: &Host, st: SpawnState, n: u64, limit: Duration) -> Duration {
    let t = Instant::now();
    let at_least = |h: &Host| {
        let order = [SpawnState::Queued, SpawnState::Running, SpawnState::Ready];
        let from = order.iter().position(|s| *s == st).unwrap();
        order[from..].iter().map(|s| h.count(*s)).sum::<u64>()
    };
    while at_least(h) < n {
        assert!(
            t.elapsed() < limit,
            "only {} of {n} {st} after {limit:?}",
            at_least(h)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// Stored spawn `i` of the seeded table: its job running (or stopped) at
/// the probe scheduler.
fn seeded(i: usize, state: SpawnState, now: chrono::DateTime<chrono::Utc>) -> Spawn {
    let stopped = state == SpawnState::Stopped;
    Spawn {
        id: format!("sp-{i:024x}"),
        user: User {
            name: format!("user{i}"),
            groups: vec![],
            admin: false,
        },
        server_name: String::new(),
        request_id: "r".into(),
        instance: "sched".into(),
        state,
        reason: stopped.then(|| "stopped".into()),
        progress: state.progress(),
        raw_options: [("cores".to_string(), vec!["2".to_string()])].into(),
        options: Some([("cores".to_string(), Value::Integer(2))].into()),
        cmd: vec!["jupyterhub-singleuser".into()],
        env_names: vec!["JUPYTERHUB_API_TOKEN".into()],
        job_id: Some(format!("probe-sp-{i:024x}")),
        plugin_state: String::new(),
        exec_host: Some("127.0.0.1".into()),
        expected_start: None,
        queue_position: None,
        time_limit_secs: None,
        end_time: None,
        host: None,
        port: None,
        tunnel_target: None,
        exit_code: stopped.then_some(0),
        unknown_polls: 0,
        flagged: None,
        created_at: now,
        updated_at: now,
        state_since: now,
        submit_started_at: None,
        fingerprint: String::new(),
    }
}

fn main() {
    let probe =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/probe.wasm");
    assert!(
        probe.exists(),
        "build the plugins first: cargo xtask plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("host.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"state_dir = "{}"
[instances.sched]
plugin = "{}"
[instances.sched.config]
behavior = "run"
argv = ["echo", "ok"]
[[instances.sched.grants.programs]]
program = "echo"
args = ["**"]
[instances.sched.limits]
concurrent_calls = 64
# 1 000 submits and a status call a second are far more than the default 600 a minute.
max_runs_per_minute = 1000000
[instances.sched.lifecycle]
poll_interval_secs = {POLL_SECS}
fast_poll_secs = {POLL_SECS}
start_timeout_secs = 86400
"#,
            dir.path().join("state").display(),
            probe.display()
        ),
    )
    .unwrap();
    let config = Config::load(&cfg_path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rss0 = rss_mib();
        let (h, _) = start(&config).await;
        let rss_started = rss_mib();

        // 1. Burst.
        let t0 = Instant::now();
        let addr = Arc::new(h.addr.clone());
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..BURST {
            let addr = addr.clone();
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let body = json!({
                    "user": {"name": format!("user{i}")},
                    "instance": "sched",
                    "request_id": "r",
                    "options": {"cores": ["2"]},
                    "env": {"JUPYTERHUB_API_TOKEN": "secret-secret"},
                    "cmd": ["jupyterhub-singleuser"],
                });
                let (st, text) = request(&addr, "POST", "/v1/spawns", Some(&body)).await;
                assert_eq!(st, 201, "{text}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let accepted = t0.elapsed();
        wait_all(&h, SpawnState::Queued, BURST as u64, Duration::from_secs(600))
            .await;
        let queued = t0.elapsed();
        assert_eq!(h.count(SpawnState::Failed), 0);
        println!("burst of {BURST} spawns: all accepted (201) after {:.2} s, all queued after {:.2} s", accepted.as_secs_f64(), queued.as_secs_f64());

        // 2. Scheduler commands per interval at 1 000 running.
        wait_all(&h, SpawnState::Running, BURST as u64, Duration::from_secs(60)).await;
        let (c0, s0, j0) = (
            h.counter("scheduler_commands"),
            h.counter("status_calls"),
            h.counter("jobs_polled"),
        );
        tokio::time::sleep(Duration::from_secs_f64(POLL_SECS * 10.0)).await;
        let (c1, s1, j1) = (
            h.counter("scheduler_commands"),
            h.counter("status_calls"),
            h.counter("jobs_polled"),
        );
        println!(
            "{BURST} running spawns, {POLL_SECS} s interval, 10 s: {} status calls, {} scheduler commands ({:.2} per interval), {} jobs per call",
            s1 - s0,
            c1 - c0,
            (c1 - c0) as f64 / (s1 - s0).max(1) as f64,
            (j1 - j0) / (s1 - s0).max(1)
        );
        let rss_burst = rss_mib();
        h.stop();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // 3. 10 000 tracked: seed the rest as running jobs, restart.
        {
            let store = wasmspawner_host::store::Store::open(&config.state_dir).unwrap();
            let now = chrono::Utc::now();
            for i in BURST..TRACKED {
                let s = seeded(i, SpawnState::Running, now);
                store.save(&s, Some(&"ab".repeat(32))).unwrap();
            }
        }
        let (h, recovery) = start(&config).await;
        println!(
            "restart with {TRACKED} stored spawns: recovered in {:.0} ms",
            recovery.as_secs_f64() * 1000.0
        );
        wait_all(&h, SpawnState::Running, TRACKED as u64, Duration::from_secs(60)).await;
        let ids: Vec<String> = h.service.list(None).into_iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), TRACKED);

        // A cursor in the middle of the table, for a page that starts there.
        let mid = h.service.list(None)[TRACKED / 2].clone();
        let mid_cursor = wasmspawner_host::service::ListCursor {
            created_at: mid.created_at,
            id: mid.id.clone(),
        }
        .encode();
        for (name, path_of) in [
            ("GET /v1/spawns/{id}", Box::new(|i: usize| format!("/v1/spawns/{}", ids[(i * 7919) % ids.len()])) as Box<dyn Fn(usize) -> String>),
            ("GET /v1/spawns?user=", Box::new(|i: usize| format!("/v1/spawns?user=user{}", (i * 7919) % TRACKED))),
            ("GET /v1/spawns (first page of 100)", Box::new(|_| "/v1/spawns".to_string())),
            ("GET /v1/spawns?cursor= (a page of 100 mid-table)", Box::new(move |_| format!("/v1/spawns?cursor={mid_cursor}"))),
        ] {
            let mut lat = Vec::new();
            for i in 0..2000 {
                let p = path_of(i);
                let t = Instant::now();
                let (st, _) = request(&h.addr, "GET", &p, None).await;
                lat.push(t.elapsed());
                assert_eq!(st, 200);
            }
            println!(
                "{name} with {TRACKED} tracked spawns (new connection per request): p50 {:.2} ms, p99 {:.2} ms",
                pct(&mut lat, 0.5).as_secs_f64() * 1000.0,
                pct(&mut lat, 0.99).as_secs_f64() * 1000.0
            );
        }
        let (s0, j0) = (h.counter("status_calls"), h.counter("jobs_polled"));
        tokio::time::sleep(Duration::from_secs_f64(POLL_SECS * 5.0)).await;
        let (s1, j1) = (h.counter("status_calls"), h.counter("jobs_polled"));
        println!(
            "{TRACKED} running spawns: {} status calls in 5 s, {} jobs per call",
            s1 - s0,
            (j1 - j0) / (s1 - s0).max(1)
        );
        let rss_tracked = rss_mib();
        println!(
            "RSS (host and bench client, one process): {rss0:.1} MiB at start, {rss_started:.1} MiB with the plugin loaded, {rss_burst:.1} MiB at {BURST} spawns, {rss_tracked:.1} MiB at {TRACKED} tracked spawns",
        );
        h.stop();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // 4. 100 000 stored spawns (the rest ended, within retention):
        // recovery time and RSS.
        {
            let store = wasmspawner_host::store::Store::open(&config.state_dir).unwrap();
            let now = chrono::Utc::now();
            for i in TRACKED..STORED {
                let s = seeded(i, SpawnState::Stopped, now);
                store.save(&s, None).unwrap();
            }
        }
        let (h, recovery) = start(&config).await;
        println!(
            "restart with {STORED} stored spawns ({TRACKED} live): recovered in {:.0} ms; RSS {:.1} MiB",
            recovery.as_secs_f64() * 1000.0,
            rss_mib()
        );
        let mut lat = Vec::new();
        for i in 0..1000 {
            let p = format!("/v1/spawns/sp-{:024x}", BURST + (i * 7919) % (STORED - BURST));
            let t = Instant::now();
            let (st, _) = request(&h.addr, "GET", &p, None).await;
            lat.push(t.elapsed());
            assert_eq!(st, 200);
        }
        println!(
            "GET /v1/spawns/{{id}} with {STORED} stored spawns: p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut lat, 0.5).as_secs_f64() * 1000.0,
            pct(&mut lat, 0.99).as_secs_f64() * 1000.0
        );
        h.stop();
    });
}
