//! The capability gate with real processes: grants, declarations, program
//! resolution, environment clearing, timeouts, output caps, run-as, audit.

use crate::common;

use std::sync::Arc;
use std::time::Instant;

use common::setup;
use wasmspawner_host::capability::audit::AuditLog;
use wasmspawner_host::capability::gate::{CallContext, Gate, Kind};
use wasmspawner_host::capability::process::run_checked;
use wasmspawner_host::config::Phase;
use wasmspawner_host::model::{DeclaredCapabilities, ProgramUse};
use wasmspawner_host::runtime::bindings::process::{Command, EnvVar, Output, RunError};

fn uses(program: &str, args: &[&str], spawn_env: bool) -> ProgramUse {
    ProgramUse {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        spawn_env,
    }
}

fn declared() -> DeclaredCapabilities {
    DeclaredCapabilities {
        programs: vec![
            uses("echo", &["**"], false),
            uses("env", &[], true),
            uses("sleep", &["*"], false),
            uses("head", &["-c", "*", "/dev/zero"], false),
            uses("id", &[], false),
            uses("no-such-program-here", &[], false),
        ],
        ssh: vec![],
        detached: vec![],
    }
}

const GRANTS: &str = r#"
[instances.t]
plugin = "unused.wasm"
[instances.t.grants]
env = ["WS_PASS", "WS_SETTABLE", "WS_FIXED=fixed-value"]
[[instances.t.grants.programs]]
program = "echo"
args = ["hello", "*"]
[[instances.t.grants.programs]]
program = "env"
args = []
spawn_env = true
[[instances.t.grants.programs]]
program = "sleep"
args = ["*"]
[[instances.t.grants.programs]]
program = "head"
args = ["-c", "*", "/dev/zero"]
[[instances.t.grants.programs]]
program = "no-such-program-here"
args = []
[instances.t.limits]
output_bytes = 1048576
call_timeout_secs = 5
"#;

struct Fixture {
    s: common::Setup,
    gate: Gate,
}

fn fixture(extra: &str) -> Fixture {
    // `extra` lines belong to [instances.t] itself.
    fixture_from(&GRANTS.replacen(
        "[instances.t.grants]\n",
        &format!("{extra}[instances.t.grants]\n"),
        1,
    ))
}

/// A gate for instance `t` of the config `text`, auditing to its state dir.
fn fixture_from(text: &str) -> Fixture {
    let s = setup(text);
    std::fs::create_dir_all(&s.config.state_dir).unwrap();
    let audit = Arc::new(AuditLog::open(&s.config.state_dir.join("audit.jsonl")).unwrap());
    let gate = Gate::new(
        s.config.instance("t").unwrap(),
        &s.config.path,
        &s.config.state_dir,
        "0123abcd",
        "test 1.0",
        declared(),
        audit,
    );
    Fixture { s, gate }
}

impl Fixture {
    /// A `process.run` call through the fixture's gate, for spawn `sp1`.
    async fn run(&self, c: Command) -> Result<Output, RunError> {
        run_checked(&self.gate, &ctx(), Kind::Run, None, c).await
    }
}

fn cmd(program: &str, args: &[&str]) -> Command {
    Command {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: vec![],
        env: vec![],
        spawn_env: false,
        timeout_ms: 0,
    }
}

fn ctx() -> CallContext {
    CallContext {
        spawn_id: Some("sp1".into()),
        user: Some("alice".into()),
        spawn_env: Arc::new(vec![(
            "JUPYTERHUB_API_TOKEN".into(),
            "secret-hub-token-value".into(),
        )]),
        phase: Some(wasmspawner_host::config::Phase::Submit),
        ..Default::default()
    }
}

#[tokio::test]
async fn granted_and_declared_runs_without_a_shell() {
    let f = fixture("");
    let out = f
        .run(cmd("echo", &["hello", "$(id); `id` > /tmp/x"]))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    // The shell metacharacters arrive as one literal argument.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello $(id); `id` > /tmp/x\n"
    );
    // Audit before act: a start record, then the end with the outcome.
    let audit = f.s.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["event"], "start");
    assert_eq!(audit[0]["phase"], "submit");
    assert_eq!(audit[0]["identity"], "host");
    assert_eq!(audit[0]["argv"][0], "/usr/bin/echo");
    assert!(audit[0]["exit_code"].is_null());
    assert_eq!(audit[1]["event"], "end");
    assert_eq!(audit[1]["exit_code"], 0);
    assert_eq!(audit[1]["spawn_id"], "sp1");
}

#[tokio::test]
async fn argument_patterns_outside_the_grant_are_denied() {
    let f = fixture("");
    let err = f.run(cmd("echo", &["goodbye", "x"])).await.unwrap_err();
    let RunError::Denied(m) = err else {
        panic!("expected denial, got {err:?}")
    };
    assert!(
        m.contains("does not match the granted argument patterns"),
        "{m}"
    );
    assert!(m.contains("host.toml"), "{m}");
    let err = f.run(cmd("echo", &["hello", "a", "b"])).await.unwrap_err();
    assert!(matches!(err, RunError::Denied(_)));
    assert_eq!(
        f.s.audit()
            .iter()
            .filter(|r| r["decision"] == "deny")
            .count(),
        2
    );
}

#[tokio::test]
async fn undeclared_or_ungranted_programs_are_denied() {
    let f = fixture("");
    // Not declared by the plugin (even though /bin/rm exists).
    let RunError::Denied(m) = f.run(cmd("rm", &["-rf", "/"])).await.unwrap_err() else {
        panic!()
    };
    assert!(m.contains("outside what plugin test 1.0 declared"), "{m}");
    // Declared, not granted.
    let RunError::Denied(m) = f.run(cmd("id", &[])).await.unwrap_err() else {
        panic!()
    };
    assert!(m.contains("not granted to instance `t`"), "{m}");
    assert!(m.contains("[[instances.t.grants.programs]]"), "{m}");
    // An absolute path is a different program than the bare name granted.
    let RunError::Denied(_) = f
        .run(cmd("/usr/bin/echo", &["hello", "x"]))
        .await
        .unwrap_err()
    else {
        panic!()
    };
    // Detached use is a separate capability.
    let RunError::Denied(_) = run_checked(
        &f.gate,
        &ctx(),
        Kind::Detached,
        None,
        cmd("echo", &["hello", "x"]),
    )
    .await
    .unwrap_err() else {
        panic!()
    };
}

#[tokio::test]
async fn programs_resolve_through_the_search_path_or_not_found() {
    let f = fixture("");
    let err = f.run(cmd("no-such-program-here", &[])).await.unwrap_err();
    let RunError::NotFound(m) = err else {
        panic!("{err:?}")
    };
    assert!(m.contains("/usr/local/bin:/usr/bin:/bin"), "{m}");

    // A site search path: the program is found there first.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("echo");
    std::fs::copy("/usr/bin/printf", &fake).unwrap();
    let f = fixture("");
    let mut inst = f.s.config.instance("t").unwrap().clone();
    inst.search_path.insert(0, dir.path().to_path_buf());
    let audit = Arc::new(AuditLog::discard());
    let gate = Gate::new(
        &inst,
        &f.s.config.path,
        &f.s.config.state_dir,
        "d",
        "test 1.0",
        declared(),
        audit,
    );
    let out = run_checked(&gate, &ctx(), Kind::Run, None, cmd("echo", &["hello", "x"]))
        .await
        .unwrap();
    // printf prints its format argument without a newline.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
}

#[tokio::test]
async fn the_environment_is_built_from_grants_only() {
    std::env::set_var("WS_PASS", "passed");
    std::env::set_var("WS_LEAK", "must-not-leak");
    let f = fixture("");
    let mut c = cmd("env", &[]);
    c.spawn_env = true;
    let out = f.run(c).await.unwrap();
    let mut env: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    env.sort();
    assert_eq!(
        env,
        vec![
            "JUPYTERHUB_API_TOKEN=secret-hub-token-value",
            "WS_FIXED=fixed-value",
            "WS_PASS=passed"
        ]
    );
    // The audit record names the variables, never their values.
    let rec = f.s.audit().pop().unwrap();
    assert!(!rec.to_string().contains("secret-hub-token-value"));
    assert!(rec["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "JUPYTERHUB_API_TOKEN"));

    // Without spawn_env in the call, no spawn variables.
    let out = f.run(cmd("env", &[])).await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("JUPYTERHUB_API_TOKEN"));

    // Plugin-set variables must be granted and not fixed.
    let mut c = cmd("env", &[]);
    c.env = vec![EnvVar {
        name: "LD_PRELOAD".into(),
        value: "/tmp/evil.so".into(),
    }];
    let RunError::Denied(m) = f.run(c).await.unwrap_err() else {
        panic!()
    };
    assert!(m.contains("LD_PRELOAD is not granted"), "{m}");
    let mut c = cmd("env", &[]);
    c.env = vec![EnvVar {
        name: "WS_SETTABLE".into(),
        value: "ok".into(),
    }];
    let out = f.run(c).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("WS_SETTABLE=ok"));
}

#[tokio::test]
async fn spawn_env_needs_declaration_and_grant() {
    let f = fixture("");
    // echo is declared and granted without spawn_env.
    let mut c = cmd("echo", &["hello", "x"]);
    c.spawn_env = true;
    let RunError::Denied(m) = f.run(c).await.unwrap_err() else {
        panic!()
    };
    assert!(m.contains("declared"), "{m}");
}

#[tokio::test]
async fn secrets_never_travel_in_argv() {
    let f = fixture("");
    let err = f
        .run(cmd("echo", &["hello", "token=secret-hub-token-value"]))
        .await
        .unwrap_err();
    let RunError::Denied(m) = err else { panic!() };
    assert!(m.contains("JUPYTERHUB_API_TOKEN"), "{m}");
    let rec = f.s.audit().pop().unwrap();
    assert!(
        !rec.to_string().contains("secret-hub-token-value"),
        "audit must redact: {rec}"
    );
    assert!(rec.to_string().contains("<redacted:JUPYTERHUB_API_TOKEN>"));
}

#[tokio::test]
async fn a_timeout_kills_the_program() {
    let f = fixture("");
    let mut c = cmd("sleep", &["30"]);
    c.timeout_ms = 300;
    let t = Instant::now();
    let err = f.run(c).await.unwrap_err();
    assert!(matches!(err, RunError::TimedOut(_)), "{err:?}");
    assert!(t.elapsed().as_secs() < 5);
    // A requested timeout above the call deadline is capped at it (5 s here).
    let rec = f.s.audit().pop().unwrap();
    assert!(rec["reason"].as_str().unwrap().contains("killed"));
}

#[tokio::test]
async fn output_is_capped() {
    let f = fixture("");
    let out = f
        .run(cmd("head", &["-c", "3000000", "/dev/zero"]))
        .await
        .unwrap();
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), 1 << 20);
    let out = f
        .run(cmd("head", &["-c", "1000", "/dev/zero"]))
        .await
        .unwrap();
    assert!(!out.truncated);
    assert_eq!(out.stdout.len(), 1000);
}

#[tokio::test]
async fn run_as_prefix_is_the_operators_with_the_user_as_one_argument() {
    let f = fixture("run_as = [\"/usr/bin/env\", \"WS_RUN_AS={user}\"]\n");
    let mut c = cmd("env", &[]);
    c.spawn_env = true;
    let out = f.run(c).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("WS_RUN_AS=alice"));
    let rec = f.s.audit().pop().unwrap();
    assert_eq!(rec["argv"][0], "/usr/bin/env");
    assert_eq!(rec["argv"][1], "WS_RUN_AS=alice");
    assert_eq!(rec["identity"], "user");
    // A status call is made for no one user: a grant that runs as the user
    // is denied there, never run as the host instead.
    let err = run_checked(
        &f.gate,
        &phase_ctx(Phase::Status, None),
        Kind::Run,
        None,
        cmd("env", &[]),
    )
    .await
    .unwrap_err();
    let RunError::Denied(m) = err else {
        panic!("expected denial, got {err:?}")
    };
    assert!(m.contains("run_as = \"host\""), "{m}");
    // The same program from form is not in the grant's phases at all.
    let err = run_checked(
        &f.gate,
        &phase_ctx(Phase::Form, Some("alice")),
        Kind::Run,
        None,
        cmd("env", &[]),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("only for submit, status, cancel"),
        "{err:?}"
    );
}

fn phase_ctx(phase: Phase, user: Option<&str>) -> CallContext {
    CallContext::new(phase, user)
}

/// Grants bound to phase and identity: who runs what from which export.
#[tokio::test]
async fn grants_are_bound_to_phases_and_identities() {
    let text = GRANTS.replacen(
        "[instances.t.grants]\n",
        "run_as = [\"/usr/bin/env\", \"WS_RUN_AS={user}\"]\n[instances.t.grants]\n",
        1,
    ) + r#"
[[instances.t.grants.programs]]
program = "id"
args = []
phases = ["status"]
run_as = "host"
"#;
    let text = text.replacen(
        "program = \"echo\"\nargs = [\"hello\", \"*\"]\n",
        "program = \"echo\"\nargs = [\"hello\", \"*\"]\nphases = [\"form\", \"submit\"]\n",
        1,
    );
    let Fixture { s, gate } = fixture_from(&text);
    // `id` runs as the host from status, and nowhere else.
    let out = run_checked(
        &gate,
        &phase_ctx(Phase::Status, None),
        Kind::Run,
        None,
        cmd("id", &[]),
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("uid="));
    for (phase, user) in [
        (Phase::Submit, Some("alice")),
        (Phase::Form, Some("alice")),
        (Phase::Cancel, Some("alice")),
    ] {
        let err = run_checked(
            &gate,
            &phase_ctx(phase, user),
            Kind::Run,
            None,
            cmd("id", &[]),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:?}").contains("only for status"),
            "{phase}: {err:?}"
        );
    }
    // `echo` from form runs as the user (the prefix), never as the host.
    let out = run_checked(
        &gate,
        &phase_ctx(Phase::Form, Some("bob")),
        Kind::Run,
        None,
        cmd("echo", &["hello", "x"]),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello x\n");
    let rec: Vec<serde_json::Value> = s.audit();
    let last = rec.iter().rev().find(|r| r["event"] == "start").unwrap();
    assert_eq!(last["phase"], "form");
    assert_eq!(last["argv"][1], "WS_RUN_AS=bob");
    // validate was never granted anything.
    let err = run_checked(
        &gate,
        &phase_ctx(Phase::Validate, Some("bob")),
        Kind::Run,
        None,
        cmd("echo", &["hello", "x"]),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("only for form, submit"),
        "{err:?}"
    );
    // describe (no phase) may run nothing.
    let err = run_checked(
        &gate,
        &CallContext::default(),
        Kind::Run,
        None,
        cmd("echo", &["hello", "x"]),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:?}").contains("being loaded"), "{err:?}");

    // Config errors name the grant: "user" without the instance's run_as,
    // a user grant listing status, an empty phase list.
    for (grant, names) in [
        ("run_as = \"user\"\n", "grants.programs[0].run_as"),
        (
            "run_as = [\"/usr/sbin/runuser\", \"-u\", \"{user}\"]\nphases = [\"status\"]\n",
            "grants.programs[0]: runs as the hub user",
        ),
        ("phases = []\n", "grants.programs[0].phases"),
        ("phases = [\"submitt\"]\n", "submitt"),
    ] {
        let bad = format!("state_dir = \"s\"\n[instances.t]\nplugin = \"x.wasm\"\n[[instances.t.grants.programs]]\nprogram = \"id\"\n{grant}");
        let e = wasmspawner_host::config::Config::parse(
            std::path::Path::new("/etc/ws/host.toml"),
            &bad,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains(names), "{grant}: {e:#}");
    }
}

/// Per-call budget, and program timeouts cut to the call's time left.
#[tokio::test]
async fn a_call_has_a_run_budget_and_programs_never_outlive_its_deadline() {
    let f = fixture("");
    let ctx = ctx();
    for _ in 0..32 {
        run_checked(&f.gate, &ctx, Kind::Run, None, cmd("echo", &["hello", "x"]))
            .await
            .unwrap();
    }
    let err = run_checked(&f.gate, &ctx, Kind::Run, None, cmd("echo", &["hello", "x"]))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("limits.max_runs_per_call"),
        "{err:?}"
    );
    // A fresh call has a fresh budget.
    run_checked(
        &f.gate,
        &self::ctx(),
        Kind::Run,
        None,
        cmd("echo", &["hello", "x"]),
    )
    .await
    .unwrap();

    // 1.5 s left in the call: `sleep 10` (command timeout 30 s) is killed
    // at the call's deadline, not 30 s later.
    let mut c = self::ctx();
    c.deadline = Some(Instant::now() + std::time::Duration::from_millis(1500));
    let t = Instant::now();
    let err = run_checked(&f.gate, &c, Kind::Run, None, cmd("sleep", &["10"]))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::TimedOut(_)), "{err:?}");
    let took = t.elapsed();
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    // Past the deadline nothing starts.
    c.deadline = Some(Instant::now());
    let err = run_checked(&f.gate, &c, Kind::Run, None, cmd("echo", &["hello", "x"]))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("deadline"), "{err:?}");
}

/// A site's command under another name or place: the grant names the
/// executable that runs when the plugin asks for `program`.
#[tokio::test]
async fn a_grant_may_name_the_executable_for_a_program() {
    let text = format!(
        "{GRANTS}[[instances.t.grants.programs]]\nprogram = \"id\"\nargs = []\npath = \"/usr/bin/whoami\"\n"
    );
    let Fixture { s, gate } = fixture_from(&text);
    let out = run_checked(&gate, &ctx(), Kind::Run, None, cmd("id", &[]))
        .await
        .unwrap();
    // whoami ran, not id (which would print uid=…).
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("uid="), "{printed}");
    assert_eq!(s.audit()[0]["argv"][0], "/usr/bin/whoami");

    // The path must be absolute, and the error names the key.
    let bad = format!(
        "state_dir = \"s\"\n{}",
        text.replace("path = \"/usr/bin/whoami\"", "path = \"bin/whoami\"")
    );
    let e =
        wasmspawner_host::config::Config::parse(std::path::Path::new("/etc/ws/host.toml"), &bad)
            .unwrap_err()
            .to_string();
    assert!(e.contains("grants.programs[5].path"), "{e}");
}
