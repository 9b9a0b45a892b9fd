//! The real `local` component through the whole cycle with a real process:
//! submit → status running → cancel → status done; a process that exits by
//! itself reports its exit code; the spawn's environment reaches the server
//! and the host's does not.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{setup, user};
use wasmspawner_host::capability::gate::CallContext;
use wasmspawner_host::model::{Job, JobSpec, JobState, Options, Value};

const CONFIG: &str = r#"
[instances.local]
plugin = "{plugin:local}"
[instances.local.grants]
env = ["JUPYTERHUB_DEFAULT_URL"]
[[instances.local.grants.detached]]
program = "sleep"
args = ["*"]
spawn_env = true
[[instances.local.grants.detached]]
program = "false"
args = []
spawn_env = true
"#;

fn spec(cmd: &[&str]) -> JobSpec {
    let mut options = Options::new();
    options.insert("interface".into(), Value::Text("lab".into()));
    JobSpec {
        spawn_id: "spawn-1".into(),
        user: user("alice"),
        options,
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env_names: vec!["JUPYTERHUB_API_TOKEN".into()],
        callback_url: "http://127.0.0.1:1/v1/spawns/spawn-1/ready".into(),
        home: Some("/tmp".into()),
    }
}

fn ctx() -> CallContext {
    CallContext {
        spawn_id: Some("spawn-1".into()),
        user: Some("alice".into()),
        spawn_env: Arc::new(vec![(
            "JUPYTERHUB_API_TOKEN".into(),
            "hub-token-for-alice".into(),
        )]),
    }
}

fn job(id: &str) -> Job {
    Job {
        job_id: id.into(),
        user: "alice".into(),
        state: String::new(),
    }
}

async fn wait_for(
    inst: &wasmspawner_host::runtime::plugin::PluginInstance,
    id: &str,
    done: bool,
) -> JobState {
    for _ in 0..100 {
        let s = inst.status(&[job(id)]).await.unwrap().remove(0);
        if matches!(s, JobState::Done { .. }) == done {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not reach done={done}");
}

#[tokio::test]
async fn submit_status_cancel_a_real_process() {
    std::env::set_var("WS_HOST_ONLY", "must-not-reach-the-server");
    let s = setup(CONFIG);
    let inst = s.instance("local").await;
    let sub = inst.submit(ctx(), &spec(&["sleep", "60"])).await.unwrap();
    let pid: u32 = sub.job_id.split('.').next().unwrap().parse().unwrap();

    let state = wait_for(&inst, &sub.job_id, false).await;
    assert_eq!(
        state,
        JobState::Running {
            host: Some("127.0.0.1".into())
        }
    );

    // The server got the spawn's environment and the granted variable only.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let mut vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
    vars.sort();
    assert_eq!(
        vars,
        vec![
            "JUPYTERHUB_API_TOKEN=hub-token-for-alice",
            "JUPYTERHUB_DEFAULT_URL=/lab"
        ]
    );
    // ...and no secret in its argv.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "/usr/bin/sleep\u{0}60\u{0}");

    inst.cancel(ctx(), &job(&sub.job_id)).await.unwrap();
    let state = wait_for(&inst, &sub.job_id, true).await;
    // SIGTERM: 128 + 15, reaped by this host.
    assert_eq!(
        state,
        JobState::Done {
            exit_code: Some(143),
            reason: "the server exited with status 143".into()
        }
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    // Cancelling again is not an error.
    inst.cancel(ctx(), &job(&sub.job_id)).await.unwrap();
}

#[tokio::test]
async fn a_server_that_exits_reports_its_exit_code() {
    let s = setup(CONFIG);
    let inst = s.instance("local").await;
    let sub = inst.submit(ctx(), &spec(&["false"])).await.unwrap();
    let state = wait_for(&inst, &sub.job_id, true).await;
    assert!(
        matches!(
            state,
            JobState::Done {
                exit_code: Some(1),
                ..
            }
        ),
        "{state:?}"
    );
}

#[tokio::test]
async fn forged_handles_are_unknown_and_cannot_be_signalled() {
    let s = setup(CONFIG);
    let inst = s.instance("local").await;
    // Our own PID with a made-up MAC: a plugin must not reach it.
    let forged = format!("{}.1.00000000000000000000000000000000", std::process::id());
    let states = inst.status(&[job(&forged), job("1.2")]).await.unwrap();
    assert!(
        states.iter().all(|s| matches!(s, JobState::Unknown { .. })),
        "{states:?}"
    );
    assert!(inst.cancel(ctx(), &job(&forged)).await.is_err());
}

#[tokio::test]
async fn a_server_command_not_granted_is_refused() {
    let s = setup(CONFIG);
    let inst = s.instance("local").await;
    let err = inst
        .submit(ctx(), &spec(&["bash", "-c", "id"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("program `bash` is not granted"),
        "{err}"
    );
}
