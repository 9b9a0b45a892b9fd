//! Hostile plugins are contained, and every import passes the one gate.
//! (Spinning, allocating, trapping and snooping plugins: plugin_runtime.rs.)

use crate::common;

use std::collections::BTreeMap;

use common::{setup, user};
use wasmspawner_host::capability::gate::CallContext;
use wasmspawner_host::model::{JobSpec, Options, Value};
use wasmspawner_host::runtime::plugin::{CallError, ValidateError};

fn probe(behavior: &str, grants: &str) -> common::Setup {
    setup(&format!(
        "[instances.p]\nplugin = \"{{plugin:probe}}\"\n[instances.p.config]\nbehavior = \"{behavior}\"\n{grants}"
    ))
}

fn spec(options: Options) -> JobSpec {
    common::job_spec(options)
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
async fn megabytes_of_plugin_output_are_refused_and_the_instance_keeps_serving() {
    let s = probe("big", "");
    let inst = s.instance("p").await;
    let err = inst.submit(ctx(), &spec(Options::new())).await.unwrap_err();
    let CallError::Failed { message, .. } = err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("8388608 bytes of plugin state"),
        "{message}"
    );
    // The same process keeps serving a well-behaved instance.
    let good = probe("ok", "");
    assert!(good.instance("p").await.form(&user("alice")).await.is_ok());
}

#[tokio::test]
async fn user_values_reach_argv_as_single_literal_arguments() {
    let s = probe(
        "inject",
        "[[instances.p.grants.programs]]\nprogram = \"echo\"\nargs = [\"hello\", \"*\"]\n",
    );
    let inst = s.instance("p").await;
    for hostile in [
        "; rm -rf /",
        "$(id)",
        "`id`",
        "-n",
        "a b  c",
        "' \" \\",
        "--help",
        "x && reboot",
    ] {
        let mut raw = BTreeMap::new();
        raw.insert("raw".to_string(), vec![hostile.to_string()]);
        let options = inst.validate(&user("alice"), &raw).await.unwrap();
        assert_eq!(options["raw"], Value::Text(hostile.trim().to_string()));
        let sub = inst.submit(ctx(), &spec(options)).await.unwrap();
        assert_eq!(
            sub.state,
            format!("hello {}\n", hostile.trim()),
            "value {hostile:?}"
        );
    }
    // Newlines and other control characters never get that far.
    for hostile in ["a\nb", "a\rb", "a\0b", "\u{1b}[31m"] {
        let mut raw = BTreeMap::new();
        raw.insert("raw".to_string(), vec![hostile.to_string()]);
        let err = inst.validate(&user("alice"), &raw).await.unwrap_err();
        let ValidateError::Fields(f) = err else {
            panic!()
        };
        assert_eq!(f[0].field, "raw");
    }
    // Every one of those calls was audited as allowed, argv as executed:
    // a start record before it ran, an end record after.
    let audit = s.audit();
    assert_eq!(audit.len(), 16);
    assert!(audit.iter().step_by(2).all(|r| r["event"] == "start"));
    assert!(audit.iter().skip(1).step_by(2).all(|r| r["event"] == "end"));
    assert!(audit
        .iter()
        .all(|r| r["decision"] == "allow" && r["argv"][0] == "/usr/bin/echo"));
    assert_eq!(audit[0]["argv"][2], "; rm -rf /");
}

#[tokio::test]
async fn every_capability_import_passes_the_gate() {
    // Nothing granted; the probe declares `id` but no SSH and no detached use.
    let s = probe("all-imports", "");
    let inst = s.instance("p").await;
    let sub = inst.submit(ctx(), &spec(Options::new())).await.unwrap();
    let lines: Vec<&str> = sub.state.lines().collect();
    assert!(
        lines[0].starts_with("run: Some(RunError::Denied"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("ssh: Some(RunError::Denied"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("start: Some(RunError::Denied"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("did not declare detached processes"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("signal: Some(RunError::Denied"),
        "{}",
        lines[4]
    );

    let audit = s.audit();
    let caps: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| {
            (
                r["capability"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        caps,
        vec![
            ("process.run", "deny"),
            ("ssh.run", "deny"),
            ("detached.start", "deny"),
            ("detached.signal", "deny")
        ]
    );
    assert!(audit
        .iter()
        .all(|r| r["instance"] == "p" && r["spawn_id"] == "s1" && r["user"] == "alice"));
}

/// The WIT's import functions, as a static list the gate is known to cover.
/// A new import makes this fail until it is wired through the gate (and the
/// runtime test above extended).
#[test]
fn the_gated_import_list_matches_the_wit() {
    let wit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../wit/since_v0.2.0/plugin.wit"
    ))
    .unwrap();
    let imported: Vec<&str> = wit
        .split("world plugin {")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("import ")
                .map(|i| i.trim_end_matches(';'))
        })
        .collect();
    let mut funcs = Vec::new();
    for iface in &imported {
        let body = wit.split(&format!("interface {iface} {{")).nth(1).unwrap();
        let body = &body[..body.find("\n}").unwrap()];
        for l in body.lines() {
            if let Some((name, _)) = l.trim().split_once(": func(") {
                funcs.push(format!("{iface}.{name}"));
            }
        }
    }
    funcs.sort();
    // Each of these is implemented in host/src/capability/<iface>.rs and
    // calls the gate (authorize, check_detached_declared, audit_signal,
    // audit_denied_ssh or log_message) before doing anything.
    assert_eq!(
        funcs,
        vec![
            "detached.send-signal",
            "detached.start",
            "detached.status",
            "log.log",
            "process.run",
            "ssh.run"
        ]
    );
}
