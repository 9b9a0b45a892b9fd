//! Isolation numbers, printed (not asserted):
//! 1. API latency p50/p99 — `GET /healthz`, `GET /v1/spawns/{id}`, and
//!    another instance's `GET /v1/plugins/b/form` — while 0, 1, 2 and 4
//!    calls of instance `spin` loop forever (goal: p99 ≤ 5 ms at every level);
//! 2. host RSS and disk growth (state directory: audit log, SQLite) under
//!    each flooding plugin.
//!
//! The HTTP side runs on a tokio runtime of its own, as `serve` does; plugin
//! code runs on the host's plugin executor.
//!
//! Run: `cargo xtask plugins && cargo bench -p wasmspawner --bench isolation`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{pct, request, rss_mib, TOKEN};
use serde_json::{json, Value};
use wasmspawner_host::config::Config;
use wasmspawner_host::daemon::Daemon;
use wasmspawner_host::http::auth::Token;

fn disk_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            disk_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn config(dir: &Path, probe: &Path) -> Config {
    let mut text = format!("state_dir = \"{}\"\n", dir.join("state").display());
    for (name, behavior, extra) in [
        (
            "spin",
            "spin",
            "[instances.spin.limits]\ncall_timeout_secs = 60\n",
        ),
        ("b", "ok", ""),
        (
            "flood",
            "flood-audit",
            "[instances.flood.limits]\nmemory_mib = 512\n",
        ),
        ("bigerror", "big-error", ""),
        (
            "bigoptions",
            "big-options",
            "[instances.bigoptions.limits]\nmemory_mib = 512\n",
        ),
        (
            "reason",
            "changing-reason",
            "[instances.reason.lifecycle]\npoll_interval_secs = 0.1\nfast_poll_secs = 0.1\n",
        ),
        (
            "cancelfails",
            "cancel-fails",
            "[instances.cancelfails.lifecycle]\npoll_interval_secs = 0.1\nfast_poll_secs = 0.1\n",
        ),
    ] {
        text.push_str(&format!(
            "[instances.{name}]\nplugin = \"{}\"\n[instances.{name}.config]\nbehavior = \"{behavior}\"\n{extra}",
            probe.display()
        ));
    }
    let path = dir.join("host.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

async fn latencies(addr: &str, path: &str, n: usize) -> (Duration, Duration) {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = request(addr, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        v.push(t.elapsed());
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/probe.wasm");
    assert!(
        probe.exists(),
        "build the plugins first: cargo xtask plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &probe);
    let state = config.state_dir.clone();
    // The HTTP runtime, like `serve`'s (one worker per core).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let daemon = Daemon::start(config.clone(), listener, Token::from_value(TOKEN)).await.unwrap();
        let addr = daemon.local.to_string();
        let start = |inst: &str, user: &str| json!({"user": {"name": user}, "instance": inst, "request_id": "r", "options": {}, "cmd": ["true"], "env": {}});
        let (status, body) = request(&addr, "POST", "/v1/spawns", Some(&start("b", "alice"))).await;
        assert_eq!(status, 201, "{body}");
        let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();

        println!("API latency while calls of instance `spin` loop forever (200 requests each; goal p99 ≤ 5 ms)");
        println!("{:>8}  {:>22}  {:>22}  {:>22}", "spinning", "GET /healthz p50/p99", "GET spawn p50/p99", "b's form p50/p99");
        let mut spinners = Vec::new();
        for level in [0usize, 1, 2, 4] {
            while spinners.len() < level {
                let a = addr.clone();
                spinners.push(tokio::spawn(async move {
                    loop {
                        request(&a, "GET", "/v1/plugins/spin/form?user=alice", None).await;
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let h = latencies(&addr, "/healthz", 200).await;
            let g = latencies(&addr, &format!("/v1/spawns/{id}"), 200).await;
            let f = latencies(&addr, "/v1/plugins/b/form?user=alice", 200).await;
            println!(
                "{level:>8}  {:>22}  {:>22}  {:>22}",
                format!("{} / {}", ms(h.0), ms(h.1)),
                format!("{} / {}", ms(g.0), ms(g.1)),
                format!("{} / {}", ms(f.0), ms(f.1))
            );
        }
        for s in spinners {
            s.abort();
        }

        println!();
        println!("Growth under each flooding plugin (state directory on disk, host RSS)");
        println!("{:<44} {:>12} {:>12} {:>14}", "plugin (what it does)", "disk +", "RSS +", "GET spawns");
        let report = |what: &str, d0: u64, r0: f64, list: usize| {
            println!(
                "{what:<44} {:>9.2} MB {:>9.1} MB {:>11} B",
                (disk_bytes(&state) as f64 - d0 as f64) / 1e6,
                rss_mib() - r0,
                list
            );
        };
        let list_len = |addr: String| async move { request(&addr, "GET", "/v1/spawns", None).await.1.len() };

        let (d0, r0) = (disk_bytes(&state), rss_mib());
        for _ in 0..10 {
            request(&addr, "GET", "/v1/plugins/flood/form?user=alice", None).await;
        }
        report("flood-audit (10 × 10 denied 120 MiB argv, logs)", d0, r0, list_len(addr.clone()).await);

        let (d0, r0) = (disk_bytes(&state), rss_mib());
        for i in 0..10 {
            request(&addr, "POST", "/v1/spawns", Some(&start("bigerror", &format!("u{i}")))).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        report("big-error (10 submits failing with 8 MiB)", d0, r0, list_len(addr.clone()).await);

        let (d0, r0) = (disk_bytes(&state), rss_mib());
        for i in 0..10 {
            request(&addr, "POST", "/v1/spawns", Some(&start("bigoptions", &format!("u{i}")))).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        report("big-options (10 validates returning 32 MiB)", d0, r0, list_len(addr.clone()).await);

        let (d0, r0) = (disk_bytes(&state), rss_mib());
        request(&addr, "POST", "/v1/spawns", Some(&start("reason", "carol"))).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        report("changing-reason (10 s at 10 polls/s)", d0, r0, list_len(addr.clone()).await);

        let (d0, r0) = (disk_bytes(&state), rss_mib());
        let (_, body) = request(&addr, "POST", "/v1/spawns", Some(&start("cancelfails", "dave"))).await;
        let cid = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap_or("").to_string();
        tokio::time::sleep(Duration::from_secs(1)).await;
        request(&addr, "DELETE", &format!("/v1/spawns/{cid}"), None).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        report("cancel-fails (30 s after DELETE)", d0, r0, list_len(addr.clone()).await);
    });
    rt.shutdown_background();
}
