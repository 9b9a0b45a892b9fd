//! Every batch plugin through the real component and the `wasmspawner
//! plugin` CLI, against fake scheduler programs (small shell scripts the
//! test writes into a directory the instance's `search_path` points at).
//!
//! Each fake records its argv, stdin and environment, answers like the real
//! scheduler, and fails like a dead controller when a `down` file exists.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::plugin_wasm;

struct Sched {
    plugin: &'static str,
    submit: &'static str,
    status: &'static str,
    cancel: &'static str,
    /// What the fake submit prints.
    submitted: &'static str,
    /// The id the plugin should parse from it.
    job_id: &'static str,
    /// What the fake status command prints: job `job_id` running on node07.
    status_out: &'static str,
    /// The form's queue field id.
    queue: &'static str,
    /// A line the default template must put in the script.
    script_line: &'static str,
}

const SCHEDULERS: &[Sched] = &[
    Sched {
        plugin: "slurm",
        submit: "sbatch",
        status: "squeue",
        cancel: "scancel",
        submitted: "101;cluster1\n",
        job_id: "101",
        status_out: "CLUSTER: cluster1\n101|RUNNING|node07|node07|None\n",
        queue: "partition",
        script_line: "#SBATCH --partition=batch",
    },
    Sched {
        plugin: "pbs",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        submitted: "101.pbs01\n",
        job_id: "101.pbs01",
        status_out: "Job Id: 101.pbs01.example.org\n    job_state = R\n    exec_host = node07/0*2\n",
        queue: "queue",
        script_line: "#PBS -q batch",
    },
    Sched {
        plugin: "torque",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        submitted: "101.torque01\n",
        job_id: "101.torque01",
        status_out: "<Data><Job><Job_Id>101.torque01</Job_Id><job_state>R</job_state><exec_host>node07/0-1</exec_host></Job></Data>\n",
        queue: "queue",
        script_line: "#PBS -q batch",
    },
    Sched {
        plugin: "gridengine",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        submitted: "Your job 101 (\"jupyterhub\") has been submitted\n",
        job_id: "101",
        status_out: "<?xml version='1.0'?>\n<job_info><queue_info><job_list state=\"running\"><JB_job_number>101</JB_job_number><state>r</state><queue_name>batch@node07</queue_name></job_list></queue_info><job_info></job_info></job_info>\n",
        queue: "queue",
        script_line: "#$ -q batch",
    },
    Sched {
        plugin: "lsf",
        submit: "bsub",
        status: "bjobs",
        cancel: "bkill",
        submitted: "Job <101> is submitted to queue <batch>.\n",
        job_id: "101",
        status_out: "101|RUN|2*node07:node08|-|480.0|7:59 L|-\n",
        queue: "queue",
        script_line: "#BSUB -q batch",
    },
    Sched {
        plugin: "htcondor",
        submit: "condor_submit",
        status: "condor_q",
        cancel: "condor_rm",
        submitted: "Submitting job(s).\n1 job(s) submitted to cluster 101.\n",
        job_id: "101",
        status_out: "101.0 2 slot1@node07 undefined undefined 1764626400 undefined\n",
        queue: "",
        script_line: "getenv = True",
    },
    Sched {
        plugin: "moab",
        submit: "msub",
        status: "checkjob",
        cancel: "mjobctl",
        submitted: "\n\n101\n\n",
        job_id: "101",
        status_out: "<Data><job JobID=\"101\" State=\"Running\" User=\"alice\"><req AllocNodeList=\"node07:2\" ReqProcPerTask=\"2\"></req></job></Data>\n",
        queue: "queue",
        script_line: "#MSUB -q batch",
    },
];

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The fake scheduler programs for `s` in `bin`, logging into `log`.
fn fakes(s: &Sched, bin: &Path, log: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    std::fs::create_dir_all(log).unwrap();
    let log = log.display();
    let down = format!(
        "if [ -e {log}/down ]; then echo 'error: cannot connect to the controller (Connection refused)' >&2; exit 1; fi\n"
    );
    write_script(
        &bin.join(s.submit),
        &format!(
            "echo \"$@\" > {log}/submit.argv\n/bin/cat > {log}/submit.stdin\n/usr/bin/env > {log}/submit.env\nprintf '%s' '{}'\n",
            s.submitted.replace('\'', "'\\''")
        ),
    );
    write_script(
        &bin.join(s.status),
        &format!(
            "echo \"$@\" >> {log}/status.argv\n{down}printf '%s' '{}'\n",
            s.status_out.replace('\'', "'\\''")
        ),
    );
    if s.cancel != s.status {
        write_script(
            &bin.join(s.cancel),
            &format!("echo \"$@\" > {log}/cancel.argv\n{down}exit 0\n"),
        );
    }
}

fn plugin_args(cmd: &str, cfg: &str, rest: &[&str]) -> Vec<String> {
    ["plugin", cmd, "-c", cfg, "-p", "sched"]
        .iter()
        .chain(rest.iter())
        .map(|s| s.to_string())
        .collect()
}

fn run(args: &[String], env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmspawner"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn cycle(s: &Sched) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let log = tmp.path().join("log");
    fakes(s, &bin, &log);
    let queue = if s.queue.is_empty() {
        String::new()
    } else {
        "[instances.sched.config.queue]\nchoices = [\"batch\", \"debug\"]\n".to_string()
    };
    // A state dir shared by the runs, so the compile cache survives them.
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-state/schedulers");
    let cfg = tmp.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "{state}"
[instances.sched]
plugin = "{wasm}"
search_path = ["{bin}"]
[instances.sched.config]
host_suffix = ".cluster.example.org"
{queue}
[[instances.sched.grants.programs]]
program = "{submit}"
spawn_env = true
[[instances.sched.grants.programs]]
program = "{status}"
[[instances.sched.grants.programs]]
program = "{cancel}"
"#,
            state = state.display(),
            wasm = match s.plugin.strip_prefix("fixture:") {
                Some(f) => common::fixture_wasm(f),
                None => plugin_wasm(s.plugin),
            }
            .display(),
            bin = bin.display(),
            submit = s.submit,
            status = s.status,
            cancel = s.cancel,
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let with = |cmd: &str, rest: &[&str]| -> Vec<String> { plugin_args(cmd, &cfg, rest) };
    let argv = |v: &Vec<String>| -> Vec<String> { v.clone() };

    // form: the queue choices from the site config.
    let a = with("form", &["--user", "alice"]);
    let (code, form, err) = run(&argv(&a), &[]);
    assert_eq!(code, 0, "{}: {err}", s.plugin);
    let ids: Vec<&str> = form["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    if !s.queue.is_empty() {
        assert_eq!(ids[0], s.queue, "{}: {ids:?}", s.plugin);
    }
    assert!(ids.contains(&"nprocs"), "{}: {ids:?}", s.plugin);

    // submit: the spawn's environment reaches the fake, never its argv.
    let secret = "s3cret-hub-token-value";
    let mut rest = vec!["--user", "alice", "--env", "WS_TEST_HUB_TOKEN"];
    let q = format!("{}=batch", s.queue);
    if !s.queue.is_empty() {
        rest.extend(["-o", q.as_str()]);
    }
    rest.extend(["--", "jupyterhub-singleuser", "--debug"]);
    let a = with("submit", &rest);
    let (code, job, err) = run(&argv(&a), &[("WS_TEST_HUB_TOKEN", secret)]);
    assert_eq!(code, 0, "{}: {err}", s.plugin);
    assert_eq!(job["job_id"], s.job_id, "{}: {err}", s.plugin);
    let script = std::fs::read_to_string(log.join("submit.stdin")).unwrap();
    assert!(
        script.contains(s.script_line),
        "{}: {:?} not in\n{script}",
        s.plugin,
        s.script_line
    );
    assert!(
        script.contains("jupyterhub-singleuser"),
        "{}: {script}",
        s.plugin
    );
    let env = std::fs::read_to_string(log.join("submit.env")).unwrap();
    assert!(
        env.contains(&format!("WS_TEST_HUB_TOKEN={secret}")),
        "{}: {env}",
        s.plugin
    );
    let submit_argv = std::fs::read_to_string(log.join("submit.argv")).unwrap();
    assert!(!submit_argv.contains(secret), "{}", s.plugin);

    // status: two jobs, one command; the absent one is done.
    let a = with("status", &["--user", "alice", s.job_id, "999"]);
    let (code, states, err) = run(&argv(&a), &[]);
    assert_eq!(code, 0, "{}: {err}", s.plugin);
    assert_eq!(states[0]["state"], "running", "{}: {states}", s.plugin);
    assert_eq!(
        states[0]["host"], "node07.cluster.example.org",
        "{}: {states}",
        s.plugin
    );
    assert_eq!(states[1]["state"], "done", "{}: {states}", s.plugin);
    let calls = std::fs::read_to_string(log.join("status.argv")).unwrap();
    assert_eq!(calls.lines().count(), 1, "{}: {calls}", s.plugin);
    // By id (Grid Engine: by the jobs' owners), never every job of the site.
    let asked = if s.plugin == "gridengine" {
        "-u alice"
    } else {
        s.job_id
    };
    assert!(calls.contains(asked), "{}: {calls}", s.plugin);

    // A dead controller: unknown, never done.
    std::fs::write(log.join("down"), "").unwrap();
    let (code, states, err) = run(&argv(&a), &[]);
    assert_eq!(code, 0, "{}: {err}", s.plugin);
    for st in states.as_array().unwrap() {
        assert_eq!(st["state"], "unknown", "{}: {states}", s.plugin);
    }
    std::fs::remove_file(log.join("down")).unwrap();

    // cancel.
    let a = with("cancel", &["--user", "alice", s.job_id]);
    let (code, _, err) = run(&argv(&a), &[]);
    assert_eq!(code, 0, "{}: {err}", s.plugin);
    let cancel = std::fs::read_to_string(log.join("cancel.argv")).unwrap();
    assert!(
        cancel.trim_end().ends_with(s.job_id),
        "{}: {cancel}",
        s.plugin
    );
}

#[test]
fn slurm() {
    cycle(&SCHEDULERS[0]);
}

/// Today's slurm plugin as built against API 0.1 (a committed component):
/// the same cycle, through the host's 0.1 dispatch.
#[test]
fn slurm_built_against_api_0_1() {
    // What that build's commands print (frozen with it).
    cycle(&Sched {
        plugin: "fixture:api-0.1/slurm",
        submit: "sbatch",
        status: "squeue",
        cancel: "scancel",
        submitted: "101;cluster1\n",
        job_id: "101",
        status_out: "CLUSTER: cluster1\n101|RUNNING|node07|node07|None\n",
        queue: "partition",
        script_line: "#SBATCH --partition=batch",
    });
}

#[test]
fn pbs() {
    cycle(&SCHEDULERS[1]);
}

#[test]
fn torque() {
    cycle(&SCHEDULERS[2]);
}

#[test]
fn gridengine() {
    cycle(&SCHEDULERS[3]);
}

#[test]
fn lsf() {
    cycle(&SCHEDULERS[4]);
}

#[test]
fn htcondor() {
    cycle(&SCHEDULERS[5]);
}

#[test]
fn moab() {
    cycle(&SCHEDULERS[6]);
}

/// The same cycle for Slurm written in Python (examples/python-plugin, built
/// with componentize-py by `cargo xtask test`): one contract, any language.
#[test]
fn python_slurm() {
    let dir = std::env::var_os("WASMSPAWNER_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    if !dir.join("python-slurm.wasm").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must test the Python plugin: build it with `cargo xtask python-plugin`");
        }
        eprintln!(
            "\n*** SKIPPED (no python-slurm.wasm): build it with `cargo xtask python-plugin` ***\n"
        );
        return;
    }
    cycle(&Sched {
        plugin: "python-slurm",
        submit: "sbatch",
        status: "squeue",
        cancel: "scancel",
        submitted: "101\n",
        job_id: "101",
        status_out: "101|RUNNING|node07|None\n",
        queue: "partition",
        script_line: "#SBATCH --partition=batch",
    });
}

/// The same cycle for Slurm written in JavaScript against API 0.2
/// (examples/js-plugin, built with componentize-js by `cargo xtask test`).
#[test]
fn js_slurm() {
    let dir = std::env::var_os("WASMSPAWNER_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    if !dir.join("js-slurm.wasm").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must test the JavaScript plugin: build it with `cargo xtask js-plugin`");
        }
        eprintln!("\n*** SKIPPED (no js-slurm.wasm): build it with `cargo xtask js-plugin` ***\n");
        return;
    }
    cycle(&Sched {
        plugin: "js-slurm",
        submit: "sbatch",
        status: "squeue",
        cancel: "scancel",
        submitted: "101\n",
        job_id: "101",
        status_out: "101|RUNNING|node07|None|1:00:00|2026-12-01T10:00:00|2026-12-01T11:00:00\n",
        queue: "partition",
        script_line: "#SBATCH --partition=batch",
    });
}

/// The example configs load, and every plugin accepts its site config; the
/// only problems allowed are scheduler commands missing on this machine.
#[test]
fn example_configs_check() {
    for example in ["slurm.toml", "batch-schedulers.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        let out = Command::new(env!("CARGO_BIN_EXE_wasmspawner"))
            .args(["check", "--json", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let reports: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{example}: {e}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        for r in reports.as_array().unwrap() {
            assert!(r["name"].is_string(), "{example}: {r}");
            for p in r["problems"].as_array().unwrap() {
                let p = p.as_str().unwrap();
                assert!(
                    p.contains("is not in the instance's search_path"),
                    "{example}: {p}"
                );
            }
        }
    }
}
