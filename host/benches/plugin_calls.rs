//! Plugin call latency, printed (not asserted): compile vs cached load, and
//! a fresh store + instantiate + call through the `InstancePre`, for the
//! `local` plugin (Rust, 0.2 MB) and `slurm` as built against API 0.2 and,
//! from the committed fixtures, against 0.1 (through the 0.1 dispatch), the
//! example site plugin (Rust on the slurm
//! logic, 1 MB) and, when built, the Python plugin (18 MB, CPython inside).
//!
//! Run: `cargo xtask plugins && cargo xtask python-plugin && cargo bench -p wasmspawner --bench plugin_calls`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmspawner_host::config::Config;
use wasmspawner_host::model::{Job, User};
use wasmspawner_host::runtime::plugin::PluginInstance;
use wasmspawner_host::runtime::Runtime;

/// Calls per measurement: `PLUGIN_CALLS_N` (default 2000).
fn calls() -> usize {
    std::env::var("PLUGIN_CALLS_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Loads `name` twice (compile, then from the cache) and times `form` calls.
async fn measure(
    runtime: &Arc<Runtime>,
    dir: &Path,
    name: &str,
    wasm: &Path,
) -> Arc<PluginInstance> {
    let cfg_path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{}\"\n[instances.p]\nplugin = \"{}\"\n",
            dir.join("state").display(),
            wasm.display()
        ),
    )
    .unwrap();
    let config = Config::load(&cfg_path).unwrap();
    let ic = config.instance("p").unwrap().clone();
    let t = Instant::now();
    let inst = PluginInstance::load(runtime.clone(), &config.path, ic.clone())
        .await
        .unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    let _again = PluginInstance::load(runtime.clone(), &config.path, ic)
        .await
        .unwrap();
    let cached = t.elapsed();
    let size = std::fs::metadata(wasm).unwrap().len();
    println!(
        "load {name} ({} KiB): compile + describe {first:?}, from the on-disk cache + describe {cached:?}",
        size / 1024
    );
    let user = User {
        name: "alice".into(),
        groups: vec!["proj-astro".into()],
        admin: false,
    };
    let n = calls();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        inst.form(&user).await.unwrap();
        samples.push(t.elapsed());
    }
    println!(
        "{name} form (instantiate + call): p50 {:?}  p99 {:?}  ({n} calls, pooling allocator: {})",
        pct(samples.clone(), 0.5),
        pct(samples, 0.99),
        runtime.pooling
    );
    inst
}

fn main() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let local = plugins.join("local.wasm");
    assert!(
        local.exists(),
        "build the plugins first: cargo xtask plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = Runtime::new(&dir.path().join("state")).unwrap();
        let inst = measure(&runtime, dir.path(), "local", &local).await;

        let jobs: Vec<Job> = (0..100)
            .map(|i| Job {
                job_id: format!("{i}.1.00"),
                user: "alice".into(),
                state: String::new(),
            })
            .collect();
        let n = 500;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            inst.status(&jobs).await.unwrap();
            samples.push(t.elapsed());
        }
        println!(
            "local status of 100 jobs (one call): p50 {:?}  p99 {:?}  ({n} calls)",
            pct(samples.clone(), 0.5),
            pct(samples, 0.99),
        );

        // The same plugins as built against API 0.1 (committed fixtures),
        // through the 0.1 dispatch: what the conversions cost.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/api-0.1");
        for name in ["local", "slurm"] {
            let label = format!("{name}@0.1");
            measure(
                &runtime,
                dir.path(),
                &label,
                &fixtures.join(format!("{name}.wasm")),
            )
            .await;
        }
        let slurm = plugins.join("slurm.wasm");
        if slurm.exists() {
            measure(&runtime, dir.path(), "slurm@0.2", &slurm).await;
        }

        for name in ["example-site", "python-slurm"] {
            let wasm = plugins.join(format!("{name}.wasm"));
            if wasm.exists() {
                measure(&runtime, dir.path(), name, &wasm).await;
            } else {
                println!("{name}: not built, skipped (cargo xtask plugins / python-plugin)");
            }
        }
    });
}
