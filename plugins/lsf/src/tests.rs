use super::*;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, FakeHost,
};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin() -> Lsf {
    ok(load::<Lsf>("{}"))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bjobs", &["**"]).exits(code, stdout, stderr);
    let out = plugin().status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

fn one(line: &str) -> String {
    states(0, &format!("{line}\n"), "", &["4711"]).remove(0)
}

#[test]
fn status_is_one_bjobs() {
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bjobs", &["**"]).stdout("");
    plugin().status(&host, &jobs(&["1", "2"]));
    assert_eq!(
        host.calls()[0].argv(),
        vec![
            "bjobs",
            "-a",
            "-u",
            "all",
            "-noheader",
            "-o",
            "jobid stat exec_host exit_code runtimelimit time_left pend_reason delimiter='|'",
            "1",
            "2"
        ]
    );
}

#[test]
fn status_pending_held_waiting_provisioning() {
    assert_eq!(
        one(
            "4711|PEND|-|-|-|-|Job's requirements for reserving resource (mem) not satisfied: 2 hosts;"
        ),
        "pending: pending: Job's requirements for reserving resource (mem) not satisfied: 2 hosts"
    );
    assert_eq!(
        one("4711|PSUSP|-|-|-|-|The job was suspended by user;"),
        "pending: held: The job was suspended by user"
    );
    assert_eq!(one("4711|WAIT|-|-|-|-|-"), "pending: waiting");
    assert_eq!(one("4711|PROV|hostA|-|-|-|-"), "pending: configuring");
}

#[test]
fn status_running_host_forms() {
    assert_eq!(
        one("4711|RUN|hostA.example.org|-|-|-|-"),
        "running@hostA.example.org"
    );
    assert_eq!(one("4711|RUN|4*hostB:2*hostC|-|-|-|-"), "running@hostB");
    assert_eq!(one("4711|RUN|hostD:hostD:hostE|-|-|-|-"), "running@hostD");
}

#[test]
fn status_suspended_and_zombie() {
    assert_eq!(one("4711|USUSP|hostA|-|-|-|-"), "pending: suspended");
    assert_eq!(one("4711|SSUSP|hostA|-|-|-|-"), "pending: suspended");
    assert_eq!(one("4711|ZOMBI|hostA|-|-|-|-"), "done: exiting");
}

#[test]
fn status_done_and_exit() {
    assert_eq!(one("4711|DONE|hostA|-|-|-|-"), "done(0): completed");
    assert_eq!(
        one("4711|EXIT|hostA|2|-|-|-"),
        "done(2): failed: exit code 2"
    );
    assert_eq!(one("4711|EXIT|-|-|-|-|-"), "done: failed");
}

#[test]
fn status_unkwn_is_unknown() {
    assert!(one("4711|UNKWN|hostA|-|-|-|-")
        .starts_with("unknown: the scheduler reports state \"UNKWN\""));
}

#[test]
fn status_not_found_is_gone_others_read() {
    let s = states(
        255,
        "4711|RUN|hostA|-|-|-|-\n",
        "Job <4712> is not found\n",
        &["4711", "4712"],
    );
    assert_eq!(s[0], "running@hostA");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
}

#[test]
fn status_absent_after_success_is_done() {
    let s = states(0, "4711|RUN|hostA|-|-|-|-\n", "", &["4711", "4713"]);
    assert!(s[1].starts_with("done: the job has left"), "{s:?}");
}

#[test]
fn status_lsf_down_is_unknown() {
    let s = states(
        255,
        "",
        "LSF is down. Please wait ...\nbatch system daemon not responding ... still trying\n",
        &["4711"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("LSF is down"),
        "{s:?}"
    );
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bjobs", &["**"])
        .fails(RunError::TimedOut("bjobs after 30 s".into()));
    assert!(brief(&plugin().status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

#[test]
fn time_limit_and_end_from_runtimelimit_and_time_left() {
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bjobs", &["**"]).stdout(
        "4711|RUN|hostA|-|60.0|0:45 L|-\n\
         4712|RUN|hostA|-|60.0/hostA|0:12 L|-\n\
         4713|PEND|-|-|480.0|-|New job is waiting for scheduling;\n\
         4714|RUN|hostA|-|-|-|-\n\
         4715|RUN|hostA|-|01:00:00|00:45:00 L|-\n\
         4716|RUN|hostA|-|60.0|0:30 E|-\n\
         4717|RUN|hostA|-|lots|9:99 L|-\n",
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ids = ["4711", "4712", "4713", "4714", "4715", "4716", "4717"];
    let states = plugin().status(&host, &jobs(&ids));
    let limits: Vec<(Option<u64>, Option<u64>)> = states
        .iter()
        .map(|s| match s {
            JobState::Running(r) => (
                r.time_limit.limit_secs,
                r.time_limit.ends_at.map(|e| e - before),
            ),
            JobState::Pending(p) => (p.time_limit.limit_secs, p.time_limit.ends_at),
            other => panic!("{other:?}"),
        })
        .collect();
    let near = |got: Option<u64>, want: u64| got.is_some_and(|g| (want..=want + 5).contains(&g));
    assert_eq!(limits[0].0, Some(3600));
    assert!(near(limits[0].1, 2700), "{limits:?}");
    assert_eq!(limits[1].0, Some(3600));
    assert!(near(limits[1].1, 720), "{limits:?}");
    assert_eq!(limits[2], (Some(28_800), None));
    assert_eq!(limits[3], (None, None));
    assert_eq!(limits[4].0, Some(3600));
    assert!(near(limits[4].1, 2700), "{limits:?}");
    // `E`: the time left of a runtime estimate, not of the limit.
    assert_eq!(limits[5], (Some(3600), None));
    assert_eq!(limits[6], (None, None));
}

#[test]
fn run_limit_and_time_left_fields() {
    assert_eq!(run_limit("480.0"), Some(28_800));
    assert_eq!(run_limit("3.0/hostA"), Some(180));
    assert_eq!(run_limit("0.5"), Some(30));
    assert_eq!(run_limit("08:00:00"), Some(28_800));
    for none in ["-", "", "inf", "NaN", "1e3", "-5.0", "/hostA", "0.0"] {
        assert_eq!(run_limit(none), None, "{none}");
    }
    assert_eq!(time_left("0:12 L"), Some(720));
    assert_eq!(time_left("12:05 L"), Some(43_500));
    assert_eq!(time_left("00:12:30 L"), Some(750));
    for none in [
        "-",
        "0:12 E",
        "0:12 X",
        "0:12",
        "0:75 L",
        "x:12 L",
        "0:12 L extra",
    ] {
        assert_eq!(time_left(none), None, "{none}");
    }
}

#[test]
fn status_malformed_is_unknown() {
    let s = states(0, "JOBID   USER    STAT  QUEUE\n", "", &["4711"]);
    assert!(
        s[0].starts_with("unknown: `bjobs`: unexpected line"),
        "{s:?}"
    );
    // The five fields of the format before the limits: not this answer.
    let s = states(0, "4711|RUN|hostA|-|-\n", "", &["4711"]);
    assert!(
        s[0].starts_with("unknown: `bjobs`: unexpected line"),
        "{s:?}"
    );
}

fn submit(code: i32, stdout: &str, stderr: &str) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bsub", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("queue", "normal"),
            int("nprocs", 2),
            int("memory", 3),
            int("runtime", 75),
        ],
    );
    let r = plugin().submit(&host, &job).map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_script_on_stdin() {
    let (host, id) = submit(0, "Job <4711> is submitted to queue <normal>.\n", "");
    assert_eq!(ok(id), "4711");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["bsub"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "#BSUB -q normal\n",
        "#BSUB -n 2\n",
        "#BSUB -M 3072MB\n",
        "#BSUB -W 1:15\n",
        "#BSUB -cwd /home/alice\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
}

#[test]
fn submit_with_default_queue_notice() {
    let (_, id) = submit(
        0,
        "Job <4712> is submitted to default queue <normal>.\n",
        "",
    );
    assert_eq!(ok(id), "4712");
    let (_, id) = submit(0, "Warning: job being submitted without an AFS token.\nJob <4713> is submitted to queue <short>.\n", "");
    assert_eq!(ok(id), "4713");
}

#[test]
fn submit_rejected() {
    let (_, r) = submit(255, "", "normal: No such queue. Job not submitted.\n");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("No such queue")));
}

#[test]
fn cancel_finished_is_fine() {
    let host = FakeHost::for_plugin::<Lsf>();
    host.on("bkill", &["1"])
        .stdout("Job <1> is being terminated\n");
    host.on("bkill", &["2"])
        .exits(255, "", "Job <2>: Job has already finished\n");
    host.on("bkill", &["3"])
        .exits(255, "", "Job <3>: User permission denied\n");
    ok(plugin().cancel(&host, &jobs(&["1"])[0]));
    ok(plugin().cancel(&host, &jobs(&["2"])[0]));
    assert!(plugin().cancel(&host, &jobs(&["3"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [
        "4711|RUN|4*hostB:2*hostC|-|-|-|-\n4712|PEND|-|-|-|-|Job's requirements for reserving resource (mem) not satisfied: 2 hosts;\n4713|DONE|hostA|0|-|-|-\n",
        "4711|EXIT|hostA|1|-|-|-\nJob <4712> is not found\n",
    ];
    assert_survives_mangled(&samples, &[0, 255], 3, |code, out| {
        states(code, out, "", &["4711", "4712", "4713"])
    });
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: Lsf,
    submit: ("bsub", "Job <101> is submitted to queue <normal>.\n", "101"),
    status: ("bjobs", "101|RUN|node07|-|480.0|7:59 L|-\n", "102"),
    dead: (255, "LSF is down. Please wait ...\n"),
    cancel: ("bkill", "Job <101>: Job has already finished\n"),
    scale: (|i| (i + 1000).to_string(), |c| {
                wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("{id}|RUN|2*node07:node08|-|480.0/hostA|7:59 L|-\n"))
                    .collect()
            }),
}
