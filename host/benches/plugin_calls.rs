//! Plugin call latency, printed (not asserted): compile vs cached load, and
//! a fresh store + instantiate + call through the `InstancePre`, for the
//! `local` plugin (Rust, 0.2 MB) and `slurm` as built against API 0.2 and,
//! from the committed fixtures, against 0.1 (through the 0.1 dispatch), the
//! example site plugin (Rust on the slurm
//! logic, 1 MB) and, when built, the Python plugin (18 MB, CPython inside).
//!
//! Then `status` of 100 and of 10 000 jobs in one call for each batch
//! plugin (and the 0.1 Slurm fixture): the real component with what it
//! declares granted, the conformance kit's fake scheduler program answering
//! each command for the jobs it names, in the scheduler's real format. It
//! prints how many commands a call ran and fails (exit 1) unless every job
//! reads running on its node.
//!
//! Run: `cargo xtask plugins && cargo xtask python-plugin && cargo bench -p wasmspawner --bench plugin_calls`
//! (`PLUGIN_CALLS_ONLY=status`: the status part alone).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmspawner_host::config::Config;
use wasmspawner_host::conformance::{self, fake, Profile};
use wasmspawner_host::model::{Job, JobState, User};
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
    assert!(
        plugins.join("local.wasm").exists(),
        "build the plugins first: cargo xtask plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let status_only = std::env::var("PLUGIN_CALLS_ONLY").is_ok_and(|v| v == "status");
    let failures = rt.block_on(async {
        if !status_only {
            calls_and_loads(&plugins, dir.path()).await;
        }
        status_at_scale(&plugins, dir.path()).await
    });
    if !failures.is_empty() {
        eprintln!("\nFAILED: status answers were wrong:");
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}

async fn calls_and_loads(plugins: &Path, dir: &Path) {
    let local = plugins.join("local.wasm");
    {
        let runtime = Runtime::new(&dir.join("state")).unwrap();
        let inst = measure(&runtime, dir, "local", &local).await;

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
                dir,
                &label,
                &fixtures.join(format!("{name}.wasm")),
            )
            .await;
        }
        let slurm = plugins.join("slurm.wasm");
        if slurm.exists() {
            measure(&runtime, dir, "slurm@0.2", &slurm).await;
        }

        for name in ["example-site", "python-slurm"] {
            let wasm = plugins.join(format!("{name}.wasm"));
            if wasm.exists() {
                measure(&runtime, dir, name, &wasm).await;
            } else {
                println!("{name}: not built, skipped (cargo xtask plugins / python-plugin)");
            }
        }
    }
}

/// Jobs asked about in one `status` call, and the calls timed of each.
const SCALES: [(usize, usize); 2] = [(100, 50), (10_000, 5)];

/// The batch plugins, by their scheduler profile.
const BATCH: [&str; 7] = [
    "slurm",
    "pbs",
    "torque",
    "gridengine",
    "lsf",
    "htcondor",
    "moab",
];

/// `n` jobs as a hub would ask about them: numbered from 100000, one per
/// user up to `owners` users (then several per user: named servers).
fn hub_jobs(p: &Profile, n: usize, owners: usize) -> Vec<Job> {
    (0..n)
        .map(|i| Job {
            job_id: (p.job_id)(&(100_000 + i).to_string()),
            user: format!("user{:05}", i % owners),
            state: String::new(),
        })
        .collect()
}

/// Why these states are not every job running on node07 (`None`: they are).
fn wrong(jobs: &[Job], states: &[JobState]) -> Option<String> {
    if states.len() != jobs.len() {
        return Some(format!("{} states for {} jobs", states.len(), jobs.len()));
    }
    let bad: Vec<(&Job, &JobState)> = jobs
        .iter()
        .zip(states)
        .filter(|(_, s)| !matches!(s, JobState::Running { host: Some(h) } if h == "node07"))
        .collect();
    let (j, s) = bad.first()?;
    Some(format!(
        "{} of {} jobs not running on node07, e.g. {}: {s:?}",
        bad.len(),
        jobs.len(),
        j.job_id
    ))
}

/// The status commands the last call ran (and forgets them).
fn take_calls(bin: &Path, program: &str) -> Vec<fake::Call> {
    let calls = fake::calls(bin);
    let _ = std::fs::remove_file(fake::calls_path(bin));
    calls.into_iter().filter(|c| c.program == program).collect()
}

/// `status` of 100 and of 10 000 jobs per call, for each batch plugin;
/// returns what was wrong.
async fn status_at_scale(plugins: &Path, dir: &Path) -> Vec<String> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/api-0.1");
    let mut cases: Vec<(String, PathBuf, &str)> = BATCH
        .iter()
        .map(|n| (n.to_string(), plugins.join(format!("{n}.wasm")), *n))
        .collect();
    cases.push(("slurm@0.1".into(), fixtures.join("slurm.wasm"), "slurm"));
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_wasmspawner"));
    println!(
        "\nstatus of many jobs in one plugin call: the real component, the kit's fake scheduler \
         program answering each command for the jobs it names (100 jobs: 100 users, 10 000 jobs: \
         1 000 users); p99 of 50 or 5 calls is their slowest; `fake`: p50 of the call's commands run \
         alone after it (the fake reads its whole script each time), `rest`: p50 of a call less \
         its fake's part, i.e. host + plugin"
    );
    println!(
        "{:<10} {:>6} {:>10} {:>10} {:>5} {:>4} {:<8} {:>6} {:>7} {:>10} {:>10}",
        "plugin",
        "jobs",
        "p50",
        "p99",
        "calls",
        "cmds",
        "program",
        "jobs/c",
        "max KiB",
        "fake",
        "rest"
    );
    let mut failures = Vec::new();
    for (label, wasm, scheduler) in cases {
        if !wasm.exists() {
            failures.push(format!(
                "{label}: {} not built (cargo xtask plugins)",
                wasm.display()
            ));
            continue;
        }
        let kit = conformance::prepare(&conformance::Options {
            plugin: wasm,
            scheduler: Some(scheduler.into()),
            site_config: None,
            groups: Vec::new(),
            cache_dir: Some(dir.join("kit-cache")),
            fake_program: Some(exe.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: {e:#}"));
        let p = kit.profile.expect("a scheduler profile");
        for (n, calls) in SCALES {
            let jobs = hub_jobs(p, n, n.min(1000));
            match status_once(&kit, p, &jobs, calls).await {
                Ok(line) => println!("{label:<10} {line}"),
                Err(e) => {
                    println!("{label:<10} {n:>6} WRONG: {e}");
                    failures.push(format!("{label}, {n} jobs: {e}"));
                }
            }
        }
        if scheduler == "gridengine" {
            // Asked by owner, 160 owners a command: 10 000 users take 63
            // commands, past the default max_runs_per_call (32).
            let jobs = hub_jobs(p, 10_000, 10_000);
            let mut reply = (p.running)(&jobs);
            reply.only_asked = true;
            fake::set_script(&kit.bin, &[(p.status.to_string(), reply)].into()).unwrap();
            let t = Instant::now();
            let states = kit.instance.status(&jobs).await.unwrap();
            let took = t.elapsed();
            let runs = take_calls(&kit.bin, p.status).len();
            let running = states
                .iter()
                .filter(|s| matches!(s, JobState::Running { .. }))
                .count();
            let why = states.iter().find_map(|s| match s {
                JobState::Unknown { reason } => Some(reason.as_str()),
                _ => None,
            });
            println!(
                "{label:<10} and 10 000 jobs of 10 000 users (not counted): {took:.1?}, {runs} `{}`, \
                 {running} running, the rest unknown ({})",
                p.status,
                why.unwrap_or("-")
            );
        }
    }
    failures
}

/// How many of the reply's jobs a command with this argv names.
fn named_jobs(reply: &fake::Reply, argv: &[String]) -> usize {
    let named = fake::asked(argv);
    reply
        .rows
        .iter()
        .filter(|r| r.get(&'i').is_some_and(|i| named.contains(i.as_str())))
        .count()
        + reply
            .records
            .iter()
            .filter(|r| named.contains(r.key.as_str()))
            .count()
}

/// Times `calls` status calls of these jobs, all listed running: a row of
/// the table.
async fn status_once(
    kit: &conformance::Bench,
    p: &Profile,
    jobs: &[Job],
    calls: usize,
) -> Result<String, String> {
    let mut reply = (p.running)(jobs);
    reply.only_asked = true;
    fake::set_script(&kit.bin, &[(p.status.to_string(), reply.clone())].into())
        .map_err(|e| e.to_string())?;
    // One untimed call: the compiled component warm, the commands seen.
    let states = kit.instance.status(jobs).await.map_err(|e| e.to_string())?;
    if let Some(w) = wrong(jobs, &states) {
        return Err(w);
    }
    let first = take_calls(&kit.bin, p.status);
    let largest = first
        .iter()
        .map(|c| reply.answer(&c.argv).len())
        .max()
        .unwrap_or(0);
    let per_command = first
        .iter()
        .map(|c| named_jobs(&reply, &c.argv))
        .max()
        .unwrap_or(0);
    // The fake's part: after each timed call, the same commands run alone
    // one after the other, as the plugin ran them; `rest` is the call less
    // that (host + plugin), pairwise, as the shared machine's load drifts.
    let run_alone = || -> Result<Duration, String> {
        let t = Instant::now();
        for c in &first {
            let out = std::process::Command::new(kit.bin.join(p.status))
                .args(&c.argv)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            if out.stdout.len() != reply.answer(&c.argv).len() {
                return Err("the fake answered differently when run alone".into());
            }
        }
        let took = t.elapsed();
        let _ = std::fs::remove_file(fake::calls_path(&kit.bin));
        Ok(took)
    };
    let mut samples = Vec::with_capacity(calls);
    let (mut alone, mut rest) = (Vec::new(), Vec::new());
    let mut runs = std::collections::BTreeSet::new();
    for _ in 0..calls {
        let t = Instant::now();
        let states = kit.instance.status(jobs).await.map_err(|e| e.to_string())?;
        let took = t.elapsed();
        samples.push(took);
        if let Some(w) = wrong(jobs, &states) {
            return Err(w);
        }
        runs.insert(take_calls(&kit.bin, p.status).len());
        let fake = run_alone()?;
        alone.push(fake);
        rest.push(took.saturating_sub(fake));
    }
    let p50 = pct(samples.clone(), 0.5);
    let runs: Vec<String> = runs.iter().map(usize::to_string).collect();
    Ok(format!(
        "{:>6} {:>10.2?} {:>10.2?} {calls:>5} {:>4} {:<8} {per_command:>6} {:>7} {:>10.2?} {:>10.2?}",
        jobs.len(),
        p50,
        pct(samples, 0.99),
        runs.join("/"),
        p.status,
        largest.div_ceil(1024),
        pct(alone, 0.5),
        pct(rest, 0.5),
    ))
}
