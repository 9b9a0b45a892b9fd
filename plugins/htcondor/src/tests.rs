use super::*;
use wasmspawner_sdk::testing::{assert_survives_mangled, brief, int, job_spec, jobs, ok, FakeHost};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin() -> HtCondor {
    ok(load::<HtCondor>("{}"))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<HtCondor>();
    host.on("condor_q", &["**"]).exits(code, stdout, stderr);
    let out = plugin().status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

fn one(line: &str) -> String {
    states(0, &format!("{line}\n"), "", &["301"]).remove(0)
}

#[test]
fn status_is_one_condor_q() {
    let host = FakeHost::for_plugin::<HtCondor>();
    host.on("condor_q", &["**"]).stdout("");
    plugin().status(&host, &jobs(&["301", "302"]));
    assert_eq!(
        host.calls()[0].argv(),
        vec![
            "condor_q",
            "-allusers",
            "301",
            "302",
            "-af:j",
            "JobStatus",
            "RemoteHost",
            "ExitCode",
            "AllowedJobDuration",
            "EnteredCurrentStatus",
            "HoldReason"
        ]
    );
}

#[test]
fn status_idle_and_held() {
    assert_eq!(
        one("301.0 1 undefined undefined undefined 1764626400 undefined"),
        "pending: pending"
    );
    assert_eq!(
        one("301.0 5 undefined undefined undefined 1764626400 via condor_hold (by user alice)"),
        "pending: held: via condor_hold (by user alice)"
    );
}

#[test]
fn status_running_slot_host() {
    assert_eq!(
        one("301.0 2 slot1@node01.example.org undefined undefined 1764626400 undefined"),
        "running@node01.example.org"
    );
    assert_eq!(
        one("301.0 2 slot1_3@gpu7 undefined undefined 1764626400 undefined"),
        "running@gpu7"
    );
}

#[test]
fn status_suspended_transferring() {
    assert_eq!(
        one("301.0 7 slot1@n1 undefined undefined 1764626400 undefined"),
        "pending: suspended"
    );
    assert_eq!(
        one("301.0 6 slot1@n1 undefined undefined 1764626400 undefined"),
        "done: exiting"
    );
}

#[test]
fn status_completed_and_removed() {
    assert_eq!(
        one("301.0 4 undefined 0 undefined 1764626400 undefined"),
        "done(0): completed"
    );
    assert_eq!(
        one("301.0 4 undefined 1 undefined 1764626400 undefined"),
        "done(1): failed: exit code 1"
    );
    assert_eq!(
        one("301.0 3 undefined undefined undefined 1764626400 undefined"),
        "done: cancelled"
    );
}

#[test]
fn status_absent_after_success_is_done() {
    let s = states(
        0,
        "302.0 2 slot1@n1 undefined undefined 1764626400 undefined\n",
        "",
        &["301", "302"],
    );
    assert!(
        s[0].starts_with("done: the job has left the queue"),
        "{s:?}"
    );
    assert_eq!(s[1], "running@n1");
}

#[test]
fn status_schedd_unreachable_is_unknown() {
    let s = states(
        1,
        "",
        "-- Failed to fetch ads from: <192.168.1.5:9618?addrs=192.168.1.5-9618> : submit.example.org\nCEDAR:6001:Failed to connect to <192.168.1.5:9618>\n",
        &["301"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("Failed to fetch ads"),
        "{s:?}"
    );
}

#[test]
fn status_error_with_rc0_is_unknown() {
    let s = states(
        0,
        "",
        "Error: Collector has no record of schedd/submitter\n",
        &["301"],
    );
    assert!(s[0].starts_with("unknown:"), "{s:?}");
}

#[test]
fn status_malformed_is_unknown() {
    let s = states(
        0,
        "-- Schedd: submit.example.org : <1.2.3.4:9618?...\n",
        "",
        &["301"],
    );
    assert!(
        s[0].starts_with("unknown: `condor_q`: unexpected line"),
        "{s:?}"
    );
    assert!(
        one("301.0 9 undefined undefined undefined 1764626400 undefined")
            .starts_with("unknown: the scheduler reports")
    );
    let host = FakeHost::for_plugin::<HtCondor>();
    host.on("condor_q", &["**"])
        .fails(RunError::NotFound("condor_q".into()));
    assert!(brief(&plugin().status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

fn submit(code: i32, stdout: &str, stderr: &str) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<HtCondor>();
    host.on("condor_submit", &["**"])
        .exits(code, stdout, stderr);
    let mut job = job_spec(
        "alice",
        vec![int("nprocs", 2), int("memory", 4), int("runtime", 60)],
    );
    job.cmd = vec!["jupyterhub-singleuser".into(), "--Spawner.x='a b'".into()];
    let r = plugin().submit(&host, &job).map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_description_on_stdin() {
    let (host, id) = submit(
        0,
        "Submitting job(s).\n1 job(s) submitted to cluster 301.\n",
        "",
    );
    assert_eq!(ok(id), "301");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["condor_submit"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "arguments = \"'jupyterhub-singleuser' '--Spawner.x=''a b'''\"\n",
        "getenv = True\n",
        "request_cpus = 2\n",
        "request_memory = 4096\n",
        "> 3600)\n",
        "initialdir = /home/alice\n",
        "queue 1\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
}

#[test]
fn submit_with_warnings() {
    let (_, id) = submit(0, "WARNING: the line 'foo' was unused\nSubmitting job(s).\n1 job(s) submitted to cluster 302.\n", "");
    assert_eq!(ok(id), "302");
}

#[test]
fn submit_rejected() {
    let (_, r) = submit(1, "Submitting job(s)\n", "ERROR: Failed to connect to local queue manager\nAUTHENTICATE:1003:Failed to authenticate with any method\n");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("queue manager")));
}

#[test]
fn cancel_finished_is_fine() {
    let host = FakeHost::for_plugin::<HtCondor>();
    host.on("condor_rm", &["1"])
        .stdout("All jobs in cluster 1 have been marked for removal\n");
    host.on("condor_rm", &["2"])
        .exits(1, "", "Couldn't find/remove all jobs in cluster 2\n");
    host.on("condor_rm", &["3"])
        .exits(1, "", "ERROR: Can't find address of local schedd\n");
    ok(plugin().cancel(&host, &jobs(&["1"])[0]));
    ok(plugin().cancel(&host, &jobs(&["2"])[0]));
    assert!(plugin().cancel(&host, &jobs(&["3"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [
        "301.0 2 slot1@node01.example.org undefined undefined 1764626400 undefined\n302.0 5 undefined undefined undefined 1764626400 via condor_hold (by user alice)\n303.0 4 undefined 0 undefined 1764626400 undefined\n",
    ];
    assert_survives_mangled(&samples, &[0, 1], 3, |code, out| {
        states(code, out, "", &["301", "302", "303"])
    });
}

#[test]
fn time_limit_and_end_from_allowed_job_duration() {
    let host = FakeHost::for_plugin::<HtCondor>();
    // condor_q -af:j … AllowedJobDuration EnteredCurrentStatus HoldReason
    host.on("condor_q", &["**"]).stdout(
        "301.0 2 slot1@node01.example.org undefined 28800 1764626400 undefined\n\
         302.0 1 undefined undefined 3600 1764626000 undefined\n\
         303.0 2 slot1@node01.example.org undefined undefined 1764626400 undefined\n\
         304.0 2 slot1@node01.example.org undefined 28800 undefined undefined\n\
         305.0 2 slot1@node01.example.org undefined -1 1764626400 undefined\n",
    );
    let ids = ["301", "302", "303", "304", "305"];
    let states = plugin().status(&host, &jobs(&ids));
    let JobState::Running(r) = &states[0] else {
        panic!("{states:?}")
    };
    assert_eq!(r.started_at, Some(1_764_626_400));
    assert_eq!(r.time_limit.limit_secs, Some(28_800));
    assert_eq!(r.time_limit.ends_at, Some(1_764_626_400 + 28_800));
    let JobState::Pending(p) = &states[1] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (p.time_limit.limit_secs, p.time_limit.ends_at),
        (Some(3600), None)
    );
    let JobState::Running(r) = &states[2] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (None, None)
    );
    assert_eq!(r.started_at, Some(1_764_626_400));
    let JobState::Running(r) = &states[3] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (Some(28_800), None)
    );
    let JobState::Running(r) = &states[4] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (None, None)
    );
}

#[test]
fn status_older_layout_is_unknown() {
    // The four attributes before the limits: not this plugin's answer.
    let s = states(0, "301.0 2 slot1@n1 undefined undefined\n", "", &["301"]);
    assert!(
        s[0].starts_with("unknown: `condor_q`: unexpected line"),
        "{s:?}"
    );
}

#[test]
fn status_cluster_is_its_process_zero_only() {
    let s = states(
        0,
        "301.1 2 slot1@n1 undefined undefined 1764626400 undefined\n",
        "",
        &["301", "301.1"],
    );
    assert!(s[0].starts_with("done:"), "{s:?}");
    assert_eq!(s[1], "running@n1");
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: HtCondor,
    submit: ("condor_submit", "Submitting job(s).\n1 job(s) submitted to cluster 101.\n", "101"),
    status: ("condor_q", "101.0 2 slot1@node07 undefined undefined 1764626400 undefined\n", "102"),
    dead: (1, "-- Failed to fetch ads from: <127.0.0.1:9618> : schedd01\n"),
    cancel: ("condor_rm", "Couldn't find/remove all jobs matching constraint (ClusterId == 101)\n"),
    scale: (|i| (i + 1000).to_string(), |c| {
                wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("{id}.0 2 slot1@node07.example.org undefined undefined 1764626400 undefined\n"))
                    .collect()
            }),
}
