//! SSH against a real sshd on 127.0.0.1 (tests/ssh/sshd-up.sh; `.ci/run`
//! starts it and sets WASMSPAWNER_TEST_SSH): remote submission with no change
//! to the plugin, hostile arguments arriving as one word each, the
//! environment and stdin travelling outside argv, strict host-key checking,
//! and the plugin's own `ssh` capability behind the gate.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{setup, user};
use wasmspawner_host::capability::gate::CallContext;
use wasmspawner_host::model::{JobSpec, Options, PluginError};
use wasmspawner_host::runtime::plugin::CallError;

struct Sshd {
    dir: PathBuf,
    port: String,
    user: String,
}

/// The test sshd (see `common::sshd_dir`).
fn sshd() -> Option<Sshd> {
    let dir = common::sshd_dir()?;
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    Some(Sshd {
        port: read("port"),
        user: read("user"),
        dir,
    })
}

fn ssh_table(s: &Sshd, known_hosts: &str, user: &str) -> String {
    format!(
        "[instances.p.ssh]\nuser = \"{user}\"\nport = {}\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n",
        s.port,
        s.dir.join("client_key").display(),
        s.dir.join(known_hosts).display()
    )
}

fn probe(
    s: &Sshd,
    config: &str,
    submit_host: bool,
    grants: &str,
    known_hosts: &str,
) -> common::Setup {
    setup(&format!(
        "[instances.p]\nplugin = \"{{plugin:probe}}\"\n{}[instances.p.config]\n{config}\n{}{grants}",
        if submit_host { "submit_host = \"127.0.0.1\"\n" } else { "" },
        ssh_table(s, known_hosts, &s.user),
    ))
}

fn spec() -> JobSpec {
    common::job_spec(Options::new())
}

fn ctx() -> CallContext {
    CallContext {
        spawn_id: Some("s1".into()),
        user: Some("alice".into()),
        spawn_env: Arc::new(vec![(
            "JUPYTERHUB_API_TOKEN".into(),
            "hub-secret-token-123".into(),
        )]),
        phase: Some(wasmspawner_host::config::Phase::Submit),
        ..Default::default()
    }
}

#[tokio::test]
async fn remote_submission_keeps_every_argument_one_word() {
    let Some(s) = sshd() else { return };
    let hostile = [
        "a b", "$(id)", "it's", ";", "`id`", "\"q\"", "x\\y", "*", "~", "$HOME",
    ];
    let argv: Vec<String> = std::iter::once("echo".to_string())
        .chain(std::iter::once("x".into()))
        .chain(hostile.iter().map(|h| h.to_string()))
        .collect();
    let config = format!(
        "behavior = \"run\"\nargv = {}",
        serde_json::to_string(&argv).unwrap()
    );
    let setup = probe(
        &s,
        &config,
        true,
        "[[instances.p.grants.programs]]\nprogram = \"echo\"\n",
        "known_hosts",
    );
    let inst = setup.instance("p").await;
    let sub = inst.submit(ctx(), &spec()).await.unwrap();
    let out = sub.state.lines().nth(1).unwrap();
    assert_eq!(out, format!("x {}", hostile.join(" ")));
    // The audit log shows the ssh command as executed.
    let rec = setup.audit().pop().unwrap();
    assert_eq!(rec["argv"][0], "/usr/bin/ssh");
    assert!(rec["argv"]
        .to_string()
        .contains("StrictHostKeyChecking=yes"));
}

#[tokio::test]
async fn environment_and_stdin_travel_outside_argv() {
    let Some(s) = sshd() else { return };
    // env: the spawn's secret reaches the remote program.
    let setup_env = probe(
        &s,
        "behavior = \"run\"\nargv = [\"env\"]\nspawn_env = true",
        true,
        "[instances.p.grants]\nenv = [\"WS_FIXED=fixed value with spaces\"]\n[[instances.p.grants.programs]]\nprogram = \"env\"\nargs = []\nspawn_env = true\n",
        "known_hosts",
    );
    let inst = setup_env.instance("p").await;
    let sub = inst.submit(ctx(), &spec()).await.unwrap();
    assert!(
        sub.state
            .contains("JUPYTERHUB_API_TOKEN=hub-secret-token-123"),
        "{}\n{:?}",
        sub.state,
        setup_env.audit()
    );
    assert!(
        sub.state.contains("WS_FIXED=fixed value with spaces"),
        "{}",
        sub.state
    );
    let rec = setup_env.audit().pop().unwrap();
    assert!(
        !rec.to_string().contains("hub-secret-token-123"),
        "secret in the audited argv: {rec}"
    );

    // stdin: after the environment block, the program reads exactly its stdin.
    let setup_cat = probe(
        &s,
        "behavior = \"run\"\nargv = [\"cat\"]\nspawn_env = false\nstdin = \"#!/bin/bash\\n#SBATCH --job-name=x\\necho 'hi'\\n\"",
        true,
        "[instances.p.grants]\nenv = [\"WS_FIXED=v\"]\n[[instances.p.grants.programs]]\nprogram = \"cat\"\n",
        "known_hosts",
    );
    let inst = setup_cat.instance("p").await;
    let sub = inst.submit(ctx(), &spec()).await.unwrap();
    assert_eq!(
        sub.state.split_once('\n').unwrap().1,
        "#!/bin/bash\n#SBATCH --job-name=x\necho 'hi'\n"
    );
}

#[tokio::test]
async fn a_changed_host_key_is_refused() {
    let Some(s) = sshd() else { return };
    let setup = probe(
        &s,
        "behavior = \"run\"\nargv = [\"echo\", \"x\"]",
        true,
        "[[instances.p.grants.programs]]\nprogram = \"echo\"\n",
        "other_known_hosts",
    );
    let inst = setup.instance("p").await;
    let err = inst.submit(ctx(), &spec()).await.unwrap_err();
    let CallError::Plugin(PluginError::Capability(m)) = err else {
        panic!("{err:?}")
    };
    // The short cause; ssh's banner goes to the host's log only.
    assert!(
        m.contains("host key verification failed for 127.0.0.1"),
        "{m}"
    );
    assert!(m.len() < 200 && !m.contains("@@@"), "{m}");
}

/// A `known_hosts` edit takes effect at the next call, although a shared
/// connection (ControlMaster) to the host is still open.
#[tokio::test]
async fn a_known_hosts_edit_takes_effect_at_the_next_call() {
    let Some(s) = sshd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::copy(s.dir.join("known_hosts"), &kh).unwrap();
    let setup = setup(&format!(
        "[instances.p]\nplugin = \"{{plugin:probe}}\"\nsubmit_host = \"127.0.0.1\"\n[instances.p.config]\nbehavior = \"run\"\nargv = [\"echo\", \"x\"]\n[instances.p.ssh]\nuser = \"{}\"\nport = {}\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nreuse_connections = true\n[[instances.p.grants.programs]]\nprogram = \"echo\"\n",
        s.user,
        s.port,
        s.dir.join("client_key").display(),
        kh.display()
    ));
    let inst = setup.instance("p").await;
    inst.submit(ctx(), &spec()).await.unwrap();
    let masters = || {
        std::fs::read_dir(setup.config.state_dir.join("ssh"))
            .unwrap()
            .count()
    };
    assert_eq!(masters(), 1, "the first call leaves a shared connection");
    // The operator replaces the host's key (here: a wrong one).
    std::fs::write(&kh, std::fs::read(s.dir.join("other_known_hosts")).unwrap()).unwrap();
    let err = inst.submit(ctx(), &spec()).await.unwrap_err().to_string();
    assert!(
        err.contains("host key verification failed for 127.0.0.1"),
        "{err}"
    );
    // And back: a fresh connection checks it again.
    std::fs::copy(s.dir.join("known_hosts"), &kh).unwrap();
    inst.submit(ctx(), &spec()).await.unwrap();
}

/// `ssh.user = "{user}"`: the program runs as the hub user's own account on
/// the remote side.
#[tokio::test]
async fn ssh_user_can_be_the_hub_users_own_account() {
    let Some(s) = sshd() else { return };
    let setup = setup(&format!(
        "[instances.p]\nplugin = \"{{plugin:probe}}\"\nsubmit_host = \"127.0.0.1\"\n[instances.p.config]\nbehavior = \"run\"\nargv = [\"id\"]\n{}[[instances.p.grants.programs]]\nprogram = \"id\"\n",
        ssh_table(&s, "known_hosts", "{user}")
    ));
    let inst = setup.instance("p").await;
    let mut c = ctx();
    c.user = Some(s.user.clone());
    let sub = inst.submit(c, &spec()).await.unwrap();
    let out = sub.state.lines().nth(1).unwrap_or("");
    assert!(
        out.starts_with("uid=") && out.contains(&format!("({})", s.user)),
        "{}",
        sub.state
    );
    let rec = setup.audit().pop().unwrap();
    assert!(
        rec["argv"]
            .to_string()
            .contains(&format!("\"-l\",\"{}\"", s.user)),
        "{rec}"
    );
    // Another hub user logs in as themselves: no such account there.
    let mut c = ctx();
    c.user = Some("nobody-here".into());
    let err = inst.submit(c, &spec()).await.unwrap_err().to_string();
    assert!(err.contains("refused the login"), "{err}");
}

#[tokio::test]
async fn the_plugins_ssh_capability_is_gated_by_host_and_program() {
    let Some(s) = sshd() else { return };
    let grants = "[[instances.p.grants.ssh]]\nhosts = [\"127.0.0.*\"]\nprogram = \"echo\"\nargs = [\"**\"]\n";
    let ok = probe(
        &s,
        "behavior = \"ssh\"\nhost = \"127.0.0.1\"\nargv = [\"echo\", \"from\", \"afar\"]",
        false,
        grants,
        "known_hosts",
    );
    let sub = ok.instance("p").await.submit(ctx(), &spec()).await.unwrap();
    assert_eq!(sub.state.lines().nth(1), Some("from afar"));

    // A host outside the grant.
    let other = probe(
        &s,
        "behavior = \"ssh\"\nhost = \"login9.example.org\"\nargv = [\"echo\", \"x\"]",
        false,
        grants,
        "known_hosts",
    );
    let err = other
        .instance("p")
        .await
        .submit(ctx(), &spec())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("on host \"login9.example.org\" is not granted"),
        "{err}"
    );
    // A host that is an ssh option.
    let inj = probe(
        &s,
        "behavior = \"ssh\"\nhost = \"-oProxyCommand=id\"\nargv = [\"echo\", \"x\"]",
        false,
        grants,
        "known_hosts",
    );
    let err = inj
        .instance("p")
        .await
        .submit(ctx(), &spec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not a host name"), "{err}");
    // A declared program not granted for SSH.
    let cat = probe(
        &s,
        "behavior = \"ssh\"\nhost = \"127.0.0.1\"\nargv = [\"cat\"]",
        false,
        grants,
        "known_hosts",
    );
    let err = cat
        .instance("p")
        .await
        .submit(ctx(), &spec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not granted"), "{err}");
}

/// Remote submission to the real one-node Slurm over SSH: the Slurm plugin,
/// unchanged, runs sbatch/squeue/scancel on the "login node" as the SSH user.
#[tokio::test]
async fn remote_submission_to_real_slurm() {
    let Some(s) = sshd() else { return };
    let Some(conf) = std::env::var("WASMSPAWNER_SLURM_CONF")
        .ok()
        .filter(|c| !c.is_empty())
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must run the SSH + Slurm test: set WASMSPAWNER_SLURM_CONF");
        }
        eprintln!(
            "\n*** SKIPPED (no Slurm): set WASMSPAWNER_SLURM_CONF (tests/slurm/slurm-up.sh) ***\n"
        );
        return;
    };
    let setup = setup(&format!(
        r#"
[instances.p]
plugin = "{{plugin:slurm}}"
submit_host = "127.0.0.1"
{}
{}"#,
        ssh_table(&s, "known_hosts", &s.user),
        common::slurm_tables("p", &conf)
    ));
    let inst = setup.instance("p").await;
    let mut job = spec();
    job.user = user(&s.user);
    job.cmd = vec!["sleep".into(), "60".into()];
    let mut c = ctx();
    c.user = Some(s.user.clone());
    let sub = inst.submit(c.clone(), &job).await.unwrap();
    let j = wasmspawner_host::model::Job {
        job_id: sub.job_id.clone(),
        user: s.user.clone(),
        state: sub.state.clone(),
    };
    let mut running = false;
    for _ in 0..60 {
        let st = inst
            .status(std::slice::from_ref(&j))
            .await
            .unwrap()
            .remove(0);
        if matches!(st, wasmspawner_host::model::JobState::Running { .. }) {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(running, "the job submitted over SSH never ran");
    // The job belongs to the SSH user.
    let out = std::process::Command::new("squeue")
        .args(["-h", "-j", &sub.job_id, "-o", "%u"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s.user);
    inst.cancel(c, &j).await.unwrap();
    let audit = setup.audit();
    assert!(audit
        .iter()
        .any(|r| r["argv"][0] == "/usr/bin/ssh" && r["argv"].to_string().contains("sbatch")));
    assert!(!audit
        .iter()
        .any(|r| r.to_string().contains("hub-secret-token-123")));
}

/// sshd down: new connections back off (0.5 s doubling) instead of one
/// login attempt per call, and the reason says why and for how long.
#[tokio::test]
async fn with_sshd_down_new_connections_back_off() {
    let Some(s) = sshd() else { return };
    // Nothing listens there: every connection is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = setup(&format!(
        "[instances.p]\nplugin = \"{{plugin:probe}}\"\nsubmit_host = \"127.0.0.1\"\n[instances.p.config]\nbehavior = \"run\"\nargv = [\"echo\", \"x\"]\n[instances.p.ssh]\nuser = \"{}\"\nport = {dead}\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n[[instances.p.grants.programs]]\nprogram = \"echo\"\n",
        s.user,
        s.dir.join("client_key").display(),
        s.dir.join("known_hosts").display()
    ));
    let inst = setup.instance("p").await;
    let start = std::time::Instant::now();
    let mut errors = Vec::new();
    while start.elapsed() < std::time::Duration::from_secs(4) {
        errors.push(inst.submit(ctx(), &spec()).await.unwrap_err().to_string());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let tried = errors.iter().filter(|e| !e.contains("backing off")).count();
    eprintln!(
        "measured: {tried} ssh connections for {} calls in 4 s with sshd down",
        errors.len()
    );
    // At about 0, 0.5, 1.5 and 3.5 s (±20%), where every call used to try.
    assert!(
        (2..=5).contains(&tried) && errors.len() > 15,
        "{tried} connections in {} calls: {errors:?}",
        errors.len()
    );
    assert!(
        errors[0].contains("connection refused by 127.0.0.1"),
        "{}",
        errors[0]
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("backing off") && e.contains("connection refused by 127.0.0.1")),
        "{errors:?}"
    );
}

/// The host asks shared connections of an older generation (a changed
/// known_hosts or key file, or past master_max_age) to stop, and leaves the
/// current one alone.
#[test]
fn shared_connections_of_an_older_generation_are_stopped() {
    let Some(s) = sshd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let sock = dir.path().join(name);
        let child = std::process::Command::new("/usr/bin/ssh")
            .args(["-F", "/dev/null", "-N", "-M", "-o", "BatchMode=yes", "-S"])
            .arg(&sock)
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                s.dir.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(s.dir.join("client_key"))
            .args(["-p", &s.port, "-l", &s.user, "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..50 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(sock.exists(), "the master {name} did not start");
        child
    };
    let mut old = start("0ld0ld0ld0-abc");
    let mut current = start("c0ffee1234-abc");
    // A stale socket file whose master is gone.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("5ta1e00000-abc")).unwrap());
    let asked = wasmspawner_host::ssh_cmd::stop_other_masters(
        std::path::Path::new("/usr/bin/ssh"),
        dir.path(),
        &["c0ffee1234".to_string()],
    );
    assert_eq!(asked, 1, "one live master of an older generation");
    let mut ended = false;
    for _ in 0..50 {
        if old.try_wait().unwrap().is_some() {
            ended = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ended, "the old master still runs");
    assert!(
        current.try_wait().unwrap().is_none(),
        "the current master was stopped"
    );
    assert!(
        !dir.path().join("5ta1e00000-abc").exists(),
        "the stale socket stays"
    );
    let _ = current.kill();
    let _ = current.wait();
}
