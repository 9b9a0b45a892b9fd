use super::*;
use wasmspawner_sdk::batch::field_ids;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, user, FakeHost,
};
use wasmspawner_sdk::{load, Plugin, PluginError, RunError};

fn plugin(config: &str) -> Slurm {
    ok(load::<Slurm>(config))
}

/// Runs `status` for `ids` against one scripted squeue answer.
fn states(config: &str, code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("squeue", &["**"]).exits(code, stdout, stderr);
    let out = plugin(config).status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1, "one squeue for all jobs");
    out.iter().map(brief).collect()
}

fn one(stdout: &str) -> String {
    states("{}", 0, stdout, "", &["7"]).remove(0)
}

#[test]
fn status_asks_once_for_every_job() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("squeue", &["**"]).stdout("");
    plugin(r#"{"extra_args":["-M","c2"]}"#).status(&host, &jobs(&["1", "2", "3"]));
    assert_eq!(
        host.calls()[0].argv(),
        vec![
            "squeue",
            "-M",
            "c2",
            "--noheader",
            "--states=all",
            "--jobs=1,2,3",
            "--format=%i|%T|%B|%N|%S|%l|%L|%r"
        ]
    );
}

#[test]
fn status_pending_held_waiting_configuring() {
    assert_eq!(
        one("7|PENDING|n/a||Resources\n"),
        "pending: pending: Resources"
    );
    assert_eq!(
        one("7|PENDING|n/a||JobHeldUser\n"),
        "pending: held: JobHeldUser"
    );
    assert_eq!(
        one("7|PENDING|n/a||Dependency\n"),
        "pending: waiting: Dependency"
    );
    assert_eq!(
        one("7|CONFIGURING|node01|node01|None\n"),
        "pending: configuring"
    );
    assert_eq!(
        one("7|REQUEUE_HOLD|n/a||JobHeldAdmin\n"),
        "pending: held: JobHeldAdmin"
    );
}

#[test]
fn status_running_hosts() {
    assert_eq!(one("7|RUNNING|node01|node01|None\n"), "running@node01");
    // No batch host: the first node of the node list.
    assert_eq!(one("7|RUNNING|n/a|gpu[03-04,07]|None\n"), "running@gpu03");
    assert_eq!(
        states(
            r#"{"host_suffix":".ib.example.org"}"#,
            0,
            "7|RUNNING|c1n5|c1n5|None\n",
            "",
            &["7"]
        ),
        vec!["running@c1n5.ib.example.org"]
    );
    assert_eq!(
        states(
            r#"{"host_pattern":"{short}-ib.example.org"}"#,
            0,
            "7|RUNNING|c1n5.cluster.org|c1n5|None\n",
            "",
            &["7"]
        ),
        vec!["running@c1n5-ib.example.org"]
    );
}

#[test]
fn status_suspended_completing_completed() {
    assert_eq!(
        one("7|SUSPENDED|node01|node01|None\n"),
        "pending: suspended"
    );
    assert_eq!(one("7|COMPLETING|node01|node01|None\n"), "done: completing");
    assert_eq!(
        one("7|COMPLETED|node01|node01|None\n"),
        "done(0): completed"
    );
}

#[test]
fn status_failed_and_cancelled() {
    assert_eq!(
        one("7|TIMEOUT|node01|node01|TimeLimit\n"),
        "done: failed: timeout"
    );
    assert_eq!(
        one("7|OUT_OF_MEMORY|node01|node01|None\n"),
        "done: failed: out_of_memory"
    );
    assert_eq!(
        one("7|NODE_FAIL|node01|node01|None\n"),
        "done: failed: node_fail"
    );
    assert_eq!(
        one("7|FAILED|node01|node01|NonZeroExitCode\n"),
        "done: failed: NonZeroExitCode"
    );
    assert_eq!(one("7|CANCELLED|node01|node01|None\n"), "done: cancelled");
    assert_eq!(one("7|CANCELLED by 1000|n/a||None\n"), "done: cancelled");
}

#[test]
fn status_absent_job_is_done_only_when_squeue_succeeded() {
    let s = states("{}", 0, "8|RUNNING|node02|node02|None\n", "", &["7", "8"]);
    assert!(
        s[0].starts_with("done: the job has left the queue"),
        "{s:?}"
    );
    assert_eq!(s[1], "running@node02");
    // `squeue -j` of purged ids only: rc 1, "Invalid job id specified".
    let s = states(
        "{}",
        1,
        "",
        "slurm_load_jobs error: Invalid job id specified\n",
        &["7"],
    );
    assert!(s[0].starts_with("done:"), "{s:?}");
}

#[test]
fn status_dead_controller_is_unknown() {
    let s = states(
        "{}",
        1,
        "",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        &["7", "8"],
    );
    assert!(s.iter().all(|s| s.starts_with("unknown:")), "{s:?}");
    assert!(s[0].contains("Unable to contact"), "{s:?}");
}

#[test]
fn status_error_output_keeps_seen_jobs_but_absent_are_unknown() {
    let s = states(
        "{}",
        0,
        "8|RUNNING|node02|node02|None\n",
        "squeue: error: Invalid user: bob\n",
        &["7", "8"],
    );
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    assert_eq!(s[1], "running@node02");
}

#[test]
fn status_malformed_or_unrecognised_is_unknown() {
    let s = states("{}", 0, "JOBID PARTITION NAME\n", "", &["7"]);
    assert!(
        s[0].starts_with("unknown: `squeue`: unexpected line"),
        "{s:?}"
    );
    assert!(one("7|WIBBLE|n/a||None\n").starts_with("unknown: the scheduler reports state"));
}

#[test]
fn status_multi_cluster_output() {
    let s = states(
        r#"{"extra_args":["-M","c1,c2"]}"#,
        0,
        "CLUSTER: c1\n7|RUNNING|a01|a01|None\nCLUSTER: c2\n8|PENDING|n/a||Priority\n",
        "",
        &["7", "8"],
    );
    assert_eq!(s, vec!["running@a01", "pending: pending: Priority"]);
}

#[test]
fn status_capability_errors_are_unknown() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("squeue", &["**"])
        .fails(RunError::TimedOut("squeue after 30 s".into()));
    let s = plugin("{}").status(&host, &jobs(&["7"]));
    assert!(brief(&s[0]).starts_with("unknown:") && brief(&s[0]).contains("timed out"));
    let host = FakeHost::for_plugin::<Slurm>();
    let s = plugin("{}").status(&host, &jobs(&["7"]));
    assert!(brief(&s[0]).contains("denied"));
}

fn submit(
    config: &str,
    code: i32,
    stdout: &str,
    stderr: &str,
) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("sbatch", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("partition", "gpu"),
            int("nprocs", 4),
            int("memory", 8),
            int("runtime", 90),
        ],
    );
    let r = plugin(config).submit(&host, &job).map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_parsable_script_on_stdin_with_spawn_env() {
    let (host, id) = submit("{}", 0, "42\n", "");
    assert_eq!(ok(id), "42");
    let call = &host.calls()[0];
    assert_eq!(call.argv(), vec!["sbatch", "--parsable"]);
    assert!(call.command.spawn_env);
    let script = call.stdin_str();
    for line in [
        "#!/bin/bash\n",
        "#SBATCH --partition=gpu\n",
        "#SBATCH --cpus-per-task=4\n",
        "#SBATCH --mem=8192M\n",
        "#SBATCH --time=01:30:00\n",
        "#SBATCH --chdir=/home/alice\n",
        "\njupyterhub-singleuser\n",
    ] {
        assert!(script.contains(line), "{line:?} not in\n{script}");
    }
    assert!(!script.contains("--gres"), "{script}");
}

#[test]
fn submit_with_cluster_suffix_and_noise() {
    let (host, id) = submit(r#"{"submit_args":["-M","c2"]}"#, 0, "43;c2\n", "");
    assert_eq!(ok(id), "43");
    assert_eq!(
        host.calls()[0].argv(),
        vec!["sbatch", "--parsable", "-M", "c2"]
    );
    let (_, id) = submit("{}", 0, "sbatch: warning: can't honor --mem\n\n44\n", "");
    assert_eq!(ok(id), "44");
}

#[test]
fn submit_errors_are_scheduler_errors() {
    let (_, r) = submit(
        "{}",
        1,
        "",
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
    );
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("Invalid partition")));
    let (_, r) = submit("{}", 0, "sbatch: nothing\n", "");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("no job id")));
}

#[test]
fn submit_quotes_the_command_and_renders_site_templates() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("sbatch", &["**"]).stdout("5\n");
    let mut job = job_spec("alice", vec![]);
    job.cmd = vec!["jupyterhub-singleuser".into(), "--x=$(rm -rf /)".into()];
    let p = plugin(
        r##"{"template":"#!/bin/sh\n#SBATCH -p {{ partition or 'dflt' }} {{ site_flag }}\nsrun {{ cmd }}\n","vars":{"site_flag":"--exclusive"}}"##,
    );
    ok(p.submit(&host, &job));
    assert_eq!(
        host.calls()[0].stdin_str(),
        "#!/bin/sh\n#SBATCH -p dflt --exclusive\nsrun jupyterhub-singleuser '--x=$(rm -rf /)'\n"
    );
}

#[test]
fn extra_options_are_off_by_default_and_allowlisted() {
    let u = user("alice");
    let p = plugin("{}");
    let opts = wasmspawner_sdk::Options::from(vec![text("options", "--qos=high")]);
    assert!(p
        .validate(&FakeHost::for_plugin::<Slurm>(), &u, opts.clone())
        .is_err());
    let p =
        plugin(r#"{"extra_options":{"enabled":true,"allowed_flags":["--qos","--constraint"]}}"#);
    assert!(p
        .validate(&FakeHost::for_plugin::<Slurm>(), &u, opts)
        .is_ok());
    for bad in ["--begin=now", "--qos=$(id)", "--qos high extra", "; rm"] {
        let o = wasmspawner_sdk::Options::from(vec![text("options", bad)]);
        assert!(
            p.validate(&FakeHost::for_plugin::<Slurm>(), &u, o).is_err(),
            "{bad}"
        );
    }
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("sbatch", &["**"]).stdout("9\n");
    let job = job_spec("alice", vec![text("options", "--qos high --constraint=ib")]);
    ok(p.submit(&host, &job));
    assert_eq!(
        host.calls()[0].argv(),
        vec!["sbatch", "--parsable", "--qos", "high", "--constraint=ib"]
    );
}

#[test]
fn form_follows_site_config_and_groups() {
    let p = plugin(
        r#"{"partition":{"choices":["debug","gpu"],"default":"debug","groups":{"gpu":["gpu-users"]}},
            "ngpus":{"enabled":true,"max":4},"account":{"enabled":true},"runtime":{"enabled":false}}"#,
    );
    let f = ok(p.form(&FakeHost::for_plugin::<Slurm>(), &user("alice")));
    assert_eq!(
        field_ids(&f),
        vec!["partition", "nprocs", "memory", "ngpus", "account"]
    );
    let wasmspawner_sdk::FieldKind::Choice(c) = &f.fields[0].kind else {
        panic!()
    };
    assert_eq!(c.len(), 1, "gpu needs the gpu-users group");
    let mut gpu_user = user("bob");
    gpu_user.groups.push("gpu-users".into());
    let o = wasmspawner_sdk::Options::from(vec![text("partition", "gpu")]);
    assert!(p
        .validate(&FakeHost::for_plugin::<Slurm>(), &user("alice"), o.clone())
        .is_err());
    assert!(p
        .validate(&FakeHost::for_plugin::<Slurm>(), &gpu_user, o)
        .is_ok());
}

#[test]
fn config_errors_name_the_key() {
    for (cfg, key) in [
        (r#"{"partiton":{}}"#, "partiton"),
        (r#"{"partition":{"choices":["a b"]}}"#, "partition.choices"),
        (r#"{"memory":{"min":8,"max":2}}"#, "memory"),
        (
            r#"{"extra_options":{"allowed_flags":["qos"]}}"#,
            "extra_options.allowed_flags",
        ),
        (r#"{"template":"{% if %}"}"#, "template"),
    ] {
        let Err(PluginError::Config(m)) = load::<Slurm>(cfg) else {
            panic!("{cfg} accepted")
        };
        assert!(m.contains(key), "{m}");
    }
}

#[test]
fn cancel_accepts_finished_jobs() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("scancel", &["1"]).stdout("");
    host.on("scancel", &["2"]).exits(
        1,
        "",
        "scancel: error: Kill job error on job id 2: Job/step already completing or completed\n",
    );
    host.on("scancel", &["3"]).exits(
        1,
        "",
        "scancel: error: Kill job error on job id 3: Access/permission denied\n",
    );
    let p = plugin("{}");
    ok(p.cancel(&host, &jobs(&["1"])[0]));
    ok(p.cancel(&host, &jobs(&["2"])[0]));
    assert!(
        matches!(p.cancel(&host, &jobs(&["3"])[0]), Err(PluginError::Scheduler(m)) if m.contains("permission"))
    );
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [
        "7|RUNNING|node01|node01|None\n8|PENDING|n/a||Resources\n9|COMPLETED|node02|node02|None\n",
        "7|RUNNING|n/a|gpu[03-04,07]|None\n8|REQUEUE_HOLD|n/a||JobHeldAdmin\n",
    ];
    assert_survives_mangled(&samples, &[0, 1], 3, |code, out| {
        states("{}", code, out, "", &["7", "8", "9"])
    });
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: Slurm,
    submit: ("sbatch", "42\n", "42"),
    status: ("squeue", "42|RUNNING|node07|node07|N/A|None\n", "43"),
    dead: (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"),
    cancel: ("scancel", "scancel: error: Kill job error on job id 42: Invalid job id specified\n"),
    scale: (|i| (i + 1000).to_string(), |c| {
                wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("{id}|RUNNING|node{id}|node{id}|None\n"))
                    .collect()
            }),
}

fn plugin_for_scale() -> Slurm {
    ok(load::<Slurm>("{}"))
}

#[test]
fn submitted_job_is_named_with_its_spawn() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("sbatch", &["**"]).stdout("42\n");
    let job = wasmspawner_sdk::testing::job_spec("alice", vec![]);
    ok(plugin_for_scale().submit(&host, &job));
    let script = host.calls()[0].stdin_str();
    assert!(
        script.contains("#SBATCH --job-name=jupyterhub-spawn-test\n"),
        "{script}"
    );
    // And the spawn is found again by that name, in one squeue.
    host.on("squeue", &["**"])
        .stdout("42|jupyterhub-spawn-test|PENDING\n");
    let b = &plugin_for_scale().0;
    let spawns = [wasmspawner_sdk::batch::find::Spawn {
        spawn_id: "spawn-test".into(),
        user: "alice".into(),
    }];
    let m = find_jobs(b, &host, &spawns).unwrap();
    assert_eq!(m["spawn-test"][0].job_id, "42");
}

#[test]
fn pending_reason_and_expected_start() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("squeue", &["**"]).stdout(
        "7|PENDING|n/a|(null)|2026-12-01T23:10:00|Priority\n8|PENDING|n/a|(null)|N/A|Resources\n9|RUNNING|node1|node1|2026-12-01T22:00:00|None\n",
    );
    let s: Vec<String> = plugin_for_scale()
        .status(&host, &jobs(&["7", "8", "9"]))
        .iter()
        .map(brief)
        .collect();
    assert_eq!(
        s,
        [
            "pending: pending: Priority, expected start 2026-12-01T23:10:00",
            "pending: pending: Resources",
            "running@node1",
        ]
    );
    assert!(host.calls()[0]
        .argv()
        .contains(&"--format=%i|%T|%B|%N|%S|%l|%L|%r".to_string()));
}

#[test]
fn time_limit_and_end_from_l_and_big_l() {
    let host = FakeHost::for_plugin::<Slurm>();
    host.on("squeue", &["**"]).stdout(
        "7|RUNNING|node07|node07|2026-12-01T10:00:00|1:00:00|45:00|None\n8|PENDING|n/a||N/A|2-00:00:00|2-00:00:00|Priority\n9|RUNNING|node07|node07|N/A|UNLIMITED|UNLIMITED|None\n",
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let states = plugin("{}").status(&host, &jobs(&["7", "8", "9"]));
    let JobState::Running(r) = &states[0] else {
        panic!("{states:?}")
    };
    assert_eq!(r.time_limit.limit_secs, Some(3600));
    let end = r.time_limit.ends_at.unwrap();
    assert!((before + 2700..=before + 2705).contains(&end), "{end}");
    let JobState::Pending(p) = &states[1] else {
        panic!("{states:?}")
    };
    assert_eq!(p.time_limit.limit_secs, Some(172_800));
    assert_eq!(p.time_limit.ends_at, None);
    let JobState::Running(r) = &states[2] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (None, None)
    );
}
