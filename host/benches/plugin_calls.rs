//! Plugin call latency, printed (not asserted): compile vs cached load, and
//! a fresh store + instantiate + call through the `InstancePre`.
//!
//! Run: `cargo xtask plugins && cargo bench -p wasmspawner --bench plugin_calls`

use std::time::{Duration, Instant};

use wasmspawner_host::config::Config;
use wasmspawner_host::model::{Job, User};
use wasmspawner_host::runtime::plugin::PluginInstance;
use wasmspawner_host::runtime::Runtime;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let local = plugins.join("local.wasm");
    assert!(
        local.exists(),
        "build the plugins first: cargo xtask plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("host.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{}\"\n[instances.local]\nplugin = \"{}\"\n",
            dir.path().join("state").display(),
            local.display()
        ),
    )
    .unwrap();
    let config = Config::load(&cfg_path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = Runtime::new(&config.state_dir).unwrap();
        let ic = config.instance("local").unwrap().clone();

        let t = Instant::now();
        let inst = PluginInstance::load(runtime.clone(), &config.path, ic.clone()).await.unwrap();
        let first = t.elapsed();
        let t = Instant::now();
        let _again = PluginInstance::load(runtime.clone(), &config.path, ic).await.unwrap();
        let cached = t.elapsed();
        println!("load local.wasm: compile + describe {first:?}, from the on-disk cache + describe {cached:?}");

        let user = User { name: "alice".into(), groups: vec![], admin: false };
        let jobs: Vec<Job> = (0..100)
            .map(|i| Job { job_id: format!("{i}.1.00"), user: "alice".into(), state: String::new() })
            .collect();
        for (label, n) in [("form (instantiate + call)", 2000usize), ("status of 100 jobs (one call)", 500)] {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                if n == 2000 {
                    inst.form(&user).await.unwrap();
                } else {
                    inst.status(&jobs).await.unwrap();
                }
                samples.push(t.elapsed());
            }
            println!(
                "{label}: p50 {:?}  p99 {:?}  ({n} calls, pooling allocator: {})",
                pct(samples.clone(), 0.5),
                pct(samples, 0.99),
                runtime.pooling
            );
        }
    });
}
