//! Plugin calls through real components: the sandbox contains spinning,
//! allocating, trapping and snooping plugins; capability denials reach the
//! plugin as errors; the next call gets a fresh instance.

use crate::common;

use std::time::Instant;

use common::{setup, user};
use wasmspawner_host::capability::gate::CallContext;
use wasmspawner_host::model::{Job, JobSpec, JobState, Options, PluginError};
use wasmspawner_host::runtime::plugin::{CallError, UNHEALTHY_AFTER};

fn probe(behavior: &str, extra_config: &str, extra: &str) -> common::Setup {
    setup(&format!(
        r#"
[instances.p]
plugin = "{{plugin:probe}}"
[instances.p.config]
behavior = "{behavior}"
{extra_config}
[[instances.p.grants.programs]]
program = "sleep"
args = ["*"]
[[instances.p.grants.programs]]
program = "env"
args = []
[instances.p.limits]
memory_mib = 32
call_timeout_secs = 2
{extra}
"#
    ))
}

fn job_spec() -> JobSpec {
    common::job_spec(Options::new())
}

fn ctx() -> CallContext {
    CallContext {
        spawn_id: Some("s1".into()),
        user: Some("alice".into()),
        spawn_env: Default::default(),
        phase: Some(wasmspawner_host::config::Phase::Submit),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_spinning_plugin_is_stopped_at_its_deadline() {
    let s = probe("spin", "", "");
    let inst = s.instance("p").await;
    let t = Instant::now();
    let err = inst.form(&user("alice")).await.unwrap_err();
    let elapsed = t.elapsed();
    let CallError::Failed { message, .. } = err else {
        panic!("{err:?}")
    };
    assert!(message.contains("call deadline of 2.0 s"), "{message}");
    assert!(elapsed.as_secs_f64() < 4.0, "stopped after {elapsed:?}");
}

#[tokio::test]
async fn an_allocating_plugin_hits_its_memory_limit() {
    let s = probe("alloc", "", "");
    let inst = s.instance("p").await;
    let CallError::Failed { message, .. } = inst.form(&user("alice")).await.unwrap_err() else {
        panic!()
    };
    assert!(message.contains("memory limit of 32 MiB"), "{message}");
}

#[tokio::test]
async fn a_trapping_plugin_fails_the_call_with_its_panic_and_the_next_call_is_fresh() {
    let s = probe("trap", "", "");
    let inst = s.instance("p").await;
    for _ in 0..UNHEALTHY_AFTER {
        let CallError::Failed { message, .. } = inst.form(&user("alice")).await.unwrap_err() else {
            panic!()
        };
        assert!(
            message.contains("probe plugin panics on purpose"),
            "{message}"
        );
    }
    let h = inst.health();
    assert!(!h.healthy);
    assert_eq!(h.consecutive_failures, UNHEALTHY_AFTER);
    // describe still works on a fresh instance (load did it), and a
    // well-behaved instance in the same process is unaffected.
    let good = probe("ok", "", "");
    let g = good.instance("p").await;
    assert_eq!(g.form(&user("alice")).await.unwrap().fields.len(), 3);
}

#[tokio::test]
async fn a_snooping_plugin_sees_no_files_no_environment_no_arguments() {
    std::env::set_var("WS_HOST_SECRET", "x");
    let s = probe("read-host", "", "");
    let inst = s.instance("p").await;
    let sub = inst.submit(ctx(), &job_spec()).await.unwrap();
    assert!(!sub.state.contains("READ"), "{}", sub.state);
    assert!(sub.state.contains("env: []"), "{}", sub.state);
    assert!(sub.state.contains("args: []"), "{}", sub.state);
}

#[tokio::test]
async fn a_declared_but_ungranted_program_is_denied_to_the_plugin_with_a_clear_error() {
    // The probe declares `id`; this instance grants no `id`.
    let s = probe("run", "argv = [\"id\"]", "");
    let inst = s.instance("p").await;
    let err = inst.submit(ctx(), &job_spec()).await.unwrap_err();
    let CallError::Plugin(PluginError::Capability(m)) = err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains("program `id` is not granted to instance `p`"),
        "{m}"
    );
    assert!(m.contains("[[instances.p.grants.programs]]"), "{m}");
    let audit = s.audit();
    let rec = audit.iter().find(|r| r["program"] == "id").unwrap();
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["user"], "alice");
    // Undeclared detached processes too.
    let s = probe("detached", "argv = [\"sleep\", \"1\"]", "");
    let inst = s.instance("p").await;
    let CallError::Plugin(PluginError::Capability(m)) =
        inst.submit(ctx(), &job_spec()).await.unwrap_err()
    else {
        panic!()
    };
    assert!(m.contains("declared"), "{m}");
}

#[tokio::test]
async fn a_granted_program_runs_for_the_plugin() {
    let s = probe("run", "argv = [\"env\"]", "");
    let inst = s.instance("p").await;
    let sub = inst.submit(ctx(), &job_spec()).await.unwrap();
    assert_eq!(sub.job_id, "probe-s1");
    assert!(sub.state.starts_with("exit=0"), "{}", sub.state);
}

#[tokio::test]
async fn status_is_one_call_for_many_jobs_and_short_answers_become_unknown() {
    let s = probe("short-status", "", "");
    let inst = s.instance("p").await;
    let jobs: Vec<Job> = (0..5)
        .map(|i| Job {
            job_id: i.to_string(),
            user: "alice".into(),
            state: String::new(),
        })
        .collect();
    let states = inst.status(&jobs).await.unwrap();
    assert_eq!(states.len(), 5);
    assert!(states.iter().all(|s| matches!(s, JobState::Unknown { .. })));
    assert_eq!(inst.health().calls, 1);
}

#[tokio::test]
async fn host_checks_options_before_the_plugin() {
    let s = probe("ok", "", "");
    let inst = s.instance("p").await;
    let mut raw = std::collections::BTreeMap::new();
    raw.insert("cores".to_string(), vec!["99".to_string()]);
    raw.insert("note".to_string(), vec!["$(reboot)".to_string()]);
    let err = inst.validate(&user("alice"), &raw).await.unwrap_err();
    let wasmspawner_host::runtime::plugin::ValidateError::Fields(f) = err else {
        panic!()
    };
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].field, "cores");
    assert_eq!(f[1].field, "note");
}

#[tokio::test]
async fn a_pinned_digest_refuses_another_component() {
    let s = probe("ok", "", "");
    let mut ic = s.config.instance("p").unwrap().clone();
    ic.sha256 = Some("0".repeat(64));
    let err =
        wasmspawner_host::runtime::plugin::PluginInstance::load(s.runtime(), &s.config.path, ic)
            .await
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("but the config pins"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_clearly() {
    let s = probe("ok", "", "");
    let bad = s.dir.path().join("bad.wasm");
    std::fs::write(&bad, b"not wasm at all").unwrap();
    let mut ic = s.config.instance("p").unwrap().clone();
    ic.plugin = bad.clone();
    let err =
        wasmspawner_host::runtime::plugin::PluginInstance::load(s.runtime(), &s.config.path, ic)
            .await
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("is not a valid WebAssembly component"),
        "{err}"
    );
}

// ----- isolation: a hostile plugin cannot stall the host or its neighbours -----

use crate::service_common;

use std::time::Duration;

use service_common::{request, start_host, TOKEN};

fn two_instances(a_behavior: &str, a_limits: &str) -> String {
    format!(
        r#"
[instances.a]
plugin = "{{plugin:probe}}"
[instances.a.config]
behavior = "{a_behavior}"
seconds = "2"
[[instances.a.grants.programs]]
program = "sleep"
args = ["*"]
phases = ["form", "submit", "status", "cancel"]
[instances.a.limits]
call_timeout_secs = 3
{a_limits}
[instances.b]
plugin = "{{plugin:probe}}"
[instances.b.config]
behavior = "ok"
"#
    )
}

/// Two spinning form calls: the API (health, another instance's form) keeps
/// answering at once; the spinning calls end at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_calls_never_stall_the_api_or_another_instance() {
    let host = start_host(&two_instances("spin", "")).await;
    let form = |inst: &str| format!("{}/v1/plugins/{inst}/form?user=alice", host.url);
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let url = form("a");
            tokio::spawn(async move {
                let t = Instant::now();
                let r = request("GET", &url, Some(TOKEN), None).await;
                (r.status, t.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = request("GET", &format!("{}/healthz", host.url), None, None).await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "healthz took {worst:?} while two calls spun"
    );
    let t = Instant::now();
    let r = request("GET", &form("b"), Some(TOKEN), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "b's form took {:?}",
        t.elapsed()
    );
    for s in spinners {
        let (status, took) = s.await.unwrap();
        assert_eq!(status, 502);
        assert!(
            took < Duration::from_millis(3800),
            "a spinning call ran {took:?} (deadline 3 s)"
        );
    }
    // a's failures count against a only.
    let plugins = request(
        "GET",
        &format!("{}/v1/plugins", host.url),
        Some(TOKEN),
        None,
    )
    .await
    .json();
    let health = |n: &str| {
        plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["instance"] == n)
            .map(|p| p["health"]["failures"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(health("a"), 2, "{plugins}");
    assert_eq!(health("b"), 0, "{plugins}");
}

/// One instance's many slow calls cannot take another's pool slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_calls_of_one_instance_leave_the_others_slots_alone() {
    let s = setup(&two_instances(
        "sleep",
        "concurrent_calls = 140\nmax_runs_per_minute = 1000",
    ));
    let runtime = s.runtime();
    assert!(runtime.pool_slots >= 140 + 16, "{}", runtime.pool_slots);
    let registry = wasmspawner_host::registry::Registry::load(runtime, s.config.clone())
        .await
        .unwrap();
    let a = registry.get("a").unwrap().clone();
    let b = registry.get("b").unwrap().clone();
    let slow: Vec<_> = (0..140)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.form(&user("alice")).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.form(&user("bob")).await.expect("b keeps its own slots");
    assert_eq!(b.health().failures, 0);
    // Every slow call of a got its slot: it finished, or (on a loaded
    // machine, 140 `sleep 2` within a 3 s deadline) ran out of time — never
    // "busy" or "no slot in the pool".
    let mut ok = 0;
    for t in slow {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains("call deadline") || m.contains("timed out"),
                    "a slow call of a failed for another reason than its deadline: {m}"
                );
            }
        }
    }
    assert!(ok > 0, "no slow call of a finished");
}

#[test]
fn instances_whose_calls_exceed_the_pool_are_refused_naming_the_keys() {
    let mut body = String::new();
    for i in 0..3 {
        body.push_str(&format!(
            "[instances.i{i}]\nplugin = \"{{plugin:probe}}\"\n[instances.i{i}.limits]\nconcurrent_calls = 400\n"
        ));
    }
    let s = setup(&body);
    let e = wasmspawner_host::runtime::Runtime::for_config(&s.config)
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("instances.i0.limits.concurrent_calls = 400") && e.contains("1200"),
        "{e}"
    );
}

/// Flooding denied calls and log lines: the audit log stays small, the
/// plugin's newlines never reach a record, and the call is stopped by its
/// run budget.
#[tokio::test]
async fn an_audit_flood_is_cut_and_bounded() {
    let s = setup(
        "[instances.p]\nplugin = \"{plugin:probe}\"\n[instances.p.config]\nbehavior = \"flood-audit\"\n[instances.p.limits]\nmemory_mib = 512\ncall_timeout_secs = 30\n",
    );
    let inst = s.instance("p").await;
    let sub = inst.submit(ctx(), &job_spec()).await.unwrap();
    assert_eq!(sub.state, "denied=10");
    let path = s.config.state_dir.join("audit.jsonl");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size < 512 * 1024,
        "audit log is {size} bytes after 10 floods of 120 MiB"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let program = r["program"].as_str().unwrap();
        assert!(!program.contains('\n'), "{program:?}");
        let argv = r["argv"].as_array().unwrap();
        assert!(argv.len() <= 66, "{}", argv.len());
        assert!(argv
            .iter()
            .any(|a| a.as_str().unwrap().contains("<cut: 1048576 bytes, sha256 ")));
    }
}

#[tokio::test]
async fn one_call_runs_at_most_its_budget_of_programs() {
    let s = setup(
        "[instances.p]\nplugin = \"{plugin:probe}\"\n[instances.p.config]\nbehavior = \"run-many\"\n[[instances.p.grants.programs]]\nprogram = \"sleep\"\nargs = [\"*\"]\n[instances.p.limits]\ncall_timeout_secs = 60\n",
    );
    let inst = s.instance("p").await;
    let sub = inst.submit(ctx(), &job_spec()).await.unwrap();
    assert_eq!(sub.state, "ran=32");
    let starts = s.audit().iter().filter(|r| r["event"] == "start").count();
    assert_eq!(starts, 32);
}

/// form and validate get no process rights unless a grant names them; with
/// run_as, a program from form runs as the user or not at all.
#[tokio::test]
async fn form_cannot_run_a_submit_grant() {
    let config = |grant: &str| {
        format!(
            r#"
[instances.p]
plugin = "{{plugin:probe}}"
run_as = ["/usr/bin/env", "WS_AS={{user}}"]
[instances.p.config]
behavior = "form-run"
argv = ["id"]
[[instances.p.grants.programs]]
program = "id"
args = []
{grant}
"#
        )
    };
    let s = setup(&config(""));
    let inst = s.instance("p").await;
    let e = inst.form(&user("alice")).await.unwrap_err();
    assert!(
        format!("{e}").contains("only for submit, status, cancel"),
        "{e}"
    );
    let s = setup(&config("phases = [\"form\"]"));
    let inst = s.instance("p").await;
    let e = inst.form(&user("alice")).await.unwrap_err();
    assert!(format!("{e}").contains("ran: uid="), "{e}");
    let start = s
        .audit()
        .into_iter()
        .find(|r| r["event"] == "start")
        .unwrap();
    assert_eq!(start["phase"], "form");
    assert_eq!(start["identity"], "user");
    assert_eq!(start["argv"][1], "WS_AS=alice");
}

#[tokio::test]
async fn profiles_fixed_values_pass_the_field_checks() {
    let s = probe("bad-profile", "seconds = \"huge\"", "");
    let inst = s.instance("p").await;
    let e = inst.form(&user("alice")).await.unwrap_err().to_string();
    assert!(
        e.contains("profile `huge`, field `cores`") && e.contains("at most 8"),
        "{e}"
    );
}

#[tokio::test]
async fn a_form_with_huge_patterns_is_refused_quickly() {
    let s = setup(
        "[instances.p]\nplugin = \"{plugin:probe}\"\n[instances.p.config]\nbehavior = \"big-pattern\"\n[instances.p.limits]\nmemory_mib = 512\n",
    );
    let inst = s.instance("p").await;
    let t = Instant::now();
    let e = inst.form(&user("alice")).await.unwrap_err().to_string();
    assert!(
        e.contains("field `f0`: its pattern is") && e.contains("at most 512"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// Hot reload reads only regular files: a FIFO or a device at the plugin
/// path is refused at once and the old version keeps serving; a symlink to
/// a regular component is fine; a pinned instance compiles nothing it
/// refuses, and artefacts nobody uses are evicted.
#[tokio::test]
async fn reload_refuses_special_files_and_checks_the_pin_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.wasm");
    std::fs::copy(common::plugin_wasm("probe"), &path).unwrap();
    let s = setup(&format!(
        "[instances.p]\nplugin = \"{}\"\n[instances.p.config]\nbehavior = \"ok\"\n",
        path.display()
    ));
    // A private compile cache (the tests' shared one is never evicted).
    let state = dir.path().join("state");
    let runtime = wasmspawner_host::runtime::Runtime::new(&state).unwrap();
    let inst = load(&runtime, &s.config).await;
    let before = inst.current().digest.clone();

    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(5), inst.reload())
        .await
        .expect("never blocks")
        .unwrap_err();
    assert!(format!("{e:#}").contains("is a FIFO"), "{e:#}");
    assert!(t.elapsed() < Duration::from_secs(1));
    inst.form(&user("alice"))
        .await
        .expect("the old version serves");

    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let e = inst.reload().await.unwrap_err();
    assert!(format!("{e:#}").contains("character device"), "{e:#}");
    assert_eq!(inst.current().digest, before);

    // A symlink to a regular component (another build) is loaded.
    std::fs::remove_file(&path).unwrap();
    let other = dir.path().join("local.wasm");
    std::fs::copy(common::plugin_wasm("local"), &other).unwrap();
    std::os::unix::fs::symlink(&other, &path).unwrap();
    assert!(inst.reload().await.unwrap());
    let now = inst.current().digest.clone();
    assert_ne!(now, before);
    // It declares more than the probe did: audited (and logged at warn).
    let log = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    let reload: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["capability"] == "plugin.reload")
        .expect("a plugin.reload record");
    assert!(
        reload["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("detached.start")),
        "{reload}"
    );

    // Eviction keeps only what is in use.
    let cache = state.join("cache");
    let count = || std::fs::read_dir(&cache).unwrap().count();
    assert!(count() >= 2);
    let keep = std::collections::HashSet::from([now.clone()]);
    runtime.cache.evict_except(&keep);
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| n.starts_with(&now)), "{left:?}");

    // Pinned to the current digest: another component is refused before
    // it is compiled (nothing new in the cache).
    let pinned = setup(&format!(
        "[instances.p]\nplugin = \"{}\"\nsha256 = \"{now}\"\n",
        path.display()
    ));
    let pstate = dir.path().join("pinned-state");
    let pruntime = wasmspawner_host::runtime::Runtime::new(&pstate).unwrap();
    let pinst = load(&pruntime, &pinned.config).await;
    let pcache = pstate.join("cache");
    let n_before = std::fs::read_dir(&pcache).unwrap().count();
    std::fs::remove_file(&path).unwrap();
    std::fs::copy(common::plugin_wasm("slurm"), &path).unwrap();
    let e = pinst.reload().await.unwrap_err();
    assert!(format!("{e:#}").contains("but the config pins"), "{e:#}");
    assert_eq!(
        std::fs::read_dir(&pcache).unwrap().count(),
        n_before,
        "a refused component was compiled"
    );
}

async fn load(
    rt: &std::sync::Arc<wasmspawner_host::runtime::Runtime>,
    c: &wasmspawner_host::config::Config,
) -> std::sync::Arc<wasmspawner_host::runtime::plugin::PluginInstance> {
    wasmspawner_host::runtime::plugin::PluginInstance::load(
        rt.clone(),
        &c.path,
        c.instance("p").unwrap().clone(),
    )
    .await
    .unwrap()
}

// ----- API versions -----

use wasmspawner_host::model::{JobFacts, SpawnRef};
use wasmspawner_host::runtime::bindings::ApiVersion;
use wasmspawner_host::runtime::plugin::FindJobsError;

#[test]
fn the_api_version_is_read_before_linking() {
    // The SDK's custom section in a 0.2 build...
    let built = std::fs::read(common::plugin_wasm("local")).unwrap();
    assert_eq!(ApiVersion::of_component(&built), Ok(ApiVersion::V0_2));
    // ...and the exported interface of a 0.1 component without one.
    for f in ["api-0.1/local", "api-0.1/slurm"] {
        let old = std::fs::read(common::fixture_wasm(f)).unwrap();
        assert_eq!(ApiVersion::of_component(&old), Ok(ApiVersion::V0_1), "{f}");
    }
    // A version this host does not run is refused by name, before linking.
    let mut future = built.clone();
    let name = b"wasmspawner:api-version";
    let at = future
        .windows(name.len())
        .position(|w| w == name)
        .expect("the custom section")
        + name.len();
    assert_eq!(&future[at..at + 5], b"0.2.0");
    future[at..at + 5].copy_from_slice(b"0.9.0");
    let e = ApiVersion::of_component(&future).unwrap_err();
    assert!(e.contains("0.9.0") && e.contains("0.1, 0.2"), "{e}");
}

#[tokio::test]
async fn an_api_0_1_component_keeps_working_through_the_dispatch() {
    let path = common::fixture_wasm("api-0.1/local");
    let s = setup(&format!(
        r#"
[instances.old]
plugin = "{}"
[instances.old.grants]
env = ["JUPYTERHUB_DEFAULT_URL"]
[[instances.old.grants.detached]]
program = "sleep"
args = ["*"]
spawn_env = true
"#,
        path.display()
    ));
    let inst = s.instance("old").await;
    let loaded = inst.current();
    assert_eq!(loaded.api, ApiVersion::V0_1);
    assert_eq!(loaded.descriptor.api_version, "0.1.0");
    assert_eq!(loaded.descriptor.name, "local");
    assert_eq!(loaded.descriptor.capabilities.detached.len(), 1);
    let form = inst.form(&user("alice")).await.unwrap();
    assert!(form.fields.iter().any(|f| f.id == "interface"), "{form:?}");
    // Validate through the host's checks and the plugin's.
    let raw = [("interface".to_string(), vec!["lab".to_string()])]
        .into_iter()
        .collect();
    let options = inst.validate(&user("alice"), &raw).await.unwrap();
    // Submit starts a real process; status and cancel follow it.
    let mut spec = common::job_spec(options);
    spec.cmd = vec!["sleep".into(), "30".into()];
    let sub = inst.submit(ctx(), &spec).await.unwrap();
    let j = Job {
        job_id: sub.job_id.clone(),
        user: "alice".into(),
        state: sub.state.clone(),
    };
    let reports = inst.status_reports(std::slice::from_ref(&j)).await.unwrap();
    assert!(
        matches!(reports[0].state, JobState::Running { .. }),
        "{reports:?}"
    );
    // 0.1 cannot say more than the state.
    assert_eq!(reports[0].facts, JobFacts::default());
    let mut cancel_ctx = ctx();
    cancel_ctx.phase = Some(wasmspawner_host::config::Phase::Cancel);
    inst.cancel(cancel_ctx, &j).await.unwrap();
    // Its capability calls are audited like any other's.
    let audit = s.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["capability"] == "detached.start" && r["decision"] == "allow"),
        "{audit:?}"
    );
    // find-jobs is not in 0.1: "cannot know", never "no job".
    let e = inst
        .find_jobs(&[SpawnRef {
            spawn_id: "s1".into(),
            user: "alice".into(),
        }])
        .await
        .unwrap_err();
    assert!(matches!(e, FindJobsError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn find_jobs_answers_only_for_the_spawns_asked_and_checks_job_ids() {
    let s = probe("find-jobs", "", "");
    let inst = s.instance("p").await;
    assert_eq!(inst.current().api, ApiVersion::V0_2);
    let refs = |ids: &[&str]| -> Vec<SpawnRef> {
        ids.iter()
            .map(|i| SpawnRef {
                spawn_id: i.to_string(),
                user: "alice".into(),
            })
            .collect()
    };
    let found = inst.find_jobs(&refs(&["has-1", "none-2"])).await.unwrap();
    // The job the plugin found for a spawn never asked about is dropped.
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].spawn_id, "has-1");
    assert_eq!(found[0].job_id, "job-has-1");
    assert_eq!(found[0].state, "user=alice");
    // An unusable job id is garbage, not "no job".
    let e = inst.find_jobs(&refs(&["bad-id"])).await.unwrap_err();
    assert!(matches!(e, FindJobsError::Call(_)), "{e:?}");
    // A plugin that does not implement it says so.
    let s = probe("ok", "", "");
    let e = s
        .instance("p")
        .await
        .find_jobs(&refs(&["has-1"]))
        .await
        .unwrap_err();
    assert!(matches!(e, FindJobsError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn status_carries_time_limits_and_details_from_api_0_2() {
    let s = probe("find-jobs", "", "");
    let inst = s.instance("p").await;
    let j = Job {
        job_id: "1".into(),
        user: "alice".into(),
        state: String::new(),
    };
    let r = inst.status_reports(&[j]).await.unwrap().remove(0);
    assert_eq!(
        r.state,
        JobState::Running {
            host: Some("127.0.0.1".into())
        }
    );
    assert_eq!(r.facts.started_at, Some(1_800_000_000));
    assert_eq!(r.facts.time_limit_secs, Some(3600));
    assert_eq!(r.facts.ends_at, Some(1_800_003_600));
    // A detail whose name is not [a-z][a-z0-9-]* is dropped.
    assert_eq!(
        r.facts.details,
        vec![("partition".to_string(), "debug".to_string())]
    );
}
