//! Plugin calls through real components: the sandbox contains spinning,
//! allocating, trapping and snooping plugins; capability denials reach the
//! plugin as errors; the next call gets a fresh instance.

mod common;

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
