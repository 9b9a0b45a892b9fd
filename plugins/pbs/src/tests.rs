use super::*;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, FakeHost,
};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin(config: &str) -> Pbs {
    ok(load::<Pbs>(config))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qstat", &["**"]).exits(code, stdout, stderr);
    let out = plugin("{}").status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

/// A `qstat -f -x` block for job 101.pbs01 with these attribute lines.
fn block(attrs: &str) -> String {
    format!(
        "Job Id: 101.pbs01.example.org\n    Job_Name = jupyterhub\n    Job_Owner = alice@login01.example.org\n{attrs}    queue = workq\n    server = pbs01\n\n"
    )
}

fn one(attrs: &str) -> String {
    states(0, &block(attrs), "", &["101.pbs01"]).remove(0)
}

#[test]
fn status_is_one_qstat_for_all_jobs() {
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qstat", &["**"]).stdout("");
    plugin(r#"{"status_args":["-w"]}"#).status(&host, &jobs(&["1.s", "2.s"]));
    assert_eq!(
        host.calls()[0].argv(),
        vec!["qstat", "-w", "-f", "-x", "1.s", "2.s"]
    );
}

#[test]
fn status_queued_held_waiting_transit() {
    assert_eq!(
        one("    job_state = Q\n    comment = Not Running: Insufficient amount of resource: ncpus \n"),
        "pending: pending: Not Running: Insufficient amount of resource: ncpus"
    );
    assert_eq!(
        one("    job_state = H\n    Hold_Types = u\n"),
        "pending: held"
    );
    assert_eq!(
        one("    job_state = W\n    Execution_Time = Wed Nov 25 08:00:00 2026\n"),
        "pending: waiting"
    );
    assert_eq!(one("    job_state = T\n"), "pending: configuring");
}

#[test]
fn status_running_exec_host_forms() {
    assert_eq!(
        one("    job_state = R\n    exec_host = cn042/0*2+cn043/0*2\n    exec_vnode = (cn042:ncpus=2)+(cn043:ncpus=2)\n"),
        "running@cn042"
    );
    assert_eq!(
        one("    job_state = B\n    exec_host = cn001.example.org/1\n"),
        "running@cn001.example.org"
    );
    assert_eq!(one("    job_state = R\n"), "running@?");
}

#[test]
fn status_suspended_and_exiting() {
    assert_eq!(
        one("    job_state = S\n    exec_host = cn042/0\n"),
        "pending: suspended"
    );
    assert_eq!(
        one("    job_state = U\n    exec_host = cn042/0\n"),
        "pending: suspended"
    );
    assert_eq!(
        one("    job_state = E\n    exec_host = cn042/0\n"),
        "done: exiting"
    );
}

#[test]
fn status_finished_exit_statuses() {
    assert_eq!(
        one("    job_state = F\n    Exit_status = 0\n"),
        "done(0): completed"
    );
    assert_eq!(
        one("    job_state = F\n    Exit_status = 3\n"),
        "done(3): failed: exit code 3"
    );
    assert_eq!(
        one("    job_state = F\n    Exit_status = 271\n"),
        "done: cancelled: killed by signal 15"
    );
    assert_eq!(
        one("    job_state = F\n    Exit_status = 265\n"),
        "done: cancelled: killed by signal 9"
    );
    assert_eq!(
        one("    job_state = F\n    Exit_status = 267\n"),
        "done: failed: killed by signal 11"
    );
    assert_eq!(
        one("    job_state = F\n    Exit_status = -1\n"),
        "done: failed: could not start (exit status -1)"
    );
}

#[test]
fn status_unknown_job_id_is_gone_others_still_read() {
    let s = states(
        153,
        &block("    job_state = R\n    exec_host = cn042/0\n"),
        "qstat: Unknown Job Id 99.pbs01.example.org\n",
        &["101.pbs01", "99.pbs01"],
    );
    assert_eq!(s[0], "running@cn042");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    // Without -x, PBS says a finished job "has finished".
    let s = states(
        35,
        "",
        "qstat: 100.pbs01 Job has finished, use -x or -H to obtain historical job information\n",
        &["100.pbs01"],
    );
    assert!(s[0].starts_with("done:"), "{s:?}");
}

#[test]
fn status_absent_after_success_is_done() {
    let s = states(0, "", "", &["7.pbs01"]);
    assert!(s[0].starts_with("done: the job has left the queue"));
}

#[test]
fn status_server_down_is_unknown() {
    let s = states(
        2,
        "",
        "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n",
        &["101.pbs01"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("cannot connect"),
        "{s:?}"
    );
    let s = states(1, "", "", &["101.pbs01"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
}

#[test]
fn status_malformed_output_and_unknown_state() {
    let s = states(
        0,
        "pbs_iff: cannot read reply from pbs_server\n",
        "",
        &["101.pbs01"],
    );
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    assert!(one("    job_state = Z\n").starts_with("unknown: the scheduler reports state \"Z\""));
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qstat", &["**"])
        .fails(RunError::NotFound("qstat".into()));
    assert!(brief(&plugin("{}").status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

fn submit(code: i32, stdout: &str, stderr: &str) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qsub", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("queue", "workq"),
            int("nprocs", 2),
            int("memory", 4),
            int("runtime", 60),
        ],
    );
    let r = plugin(r#"{"account":{"enabled":true}}"#)
        .submit(&host, &job)
        .map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_script_on_stdin() {
    let (host, id) = submit(0, "101.pbs01\n", "");
    assert_eq!(ok(id), "101.pbs01");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["qsub"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "#PBS -q workq\n",
        "#PBS -l select=1:ncpus=2:mem=4096mb\n",
        "#PBS -l walltime=01:00:00\n",
        "#PBS -V\n",
        "cd /home/alice\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
    assert!(!s.contains("#PBS -A"), "{s}");
}

#[test]
fn submit_with_noise_before_the_id() {
    let (_, id) = submit(0, "qsub: warning: ignoring -m\n102.pbs01.example.org\n", "");
    assert_eq!(ok(id), "102.pbs01.example.org");
}

#[test]
fn submit_refused() {
    let (_, r) = submit(188, "", "qsub: Job exceeds queue resource limits\n");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("exceeds queue")));
}

#[test]
fn cancel_finished_is_fine() {
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qdel", &["1.s"])
        .exits(35, "", "qdel: Job has finished 1.s\n");
    host.on("qdel", &["2.s"])
        .exits(153, "", "qdel: Unknown Job Id 2.s\n");
    host.on("qdel", &["3.s"])
        .exits(159, "", "qdel: Unauthorized Request  3.s\n");
    let p = plugin("{}");
    ok(p.cancel(&host, &jobs(&["1.s"])[0]));
    ok(p.cancel(&host, &jobs(&["2.s"])[0]));
    assert!(p.cancel(&host, &jobs(&["3.s"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [
        block("    job_state = R\n    exec_host = cn042/0*2+cn043/0*2\n    exec_vnode = (cn042:ncpus=2)+(cn043:ncpus=2)\n")
            + &block("    job_state = Q\n    comment = Not Running: Insufficient amount of resource: ncpus \n").replace("101.", "102."),
        block("    job_state = F\n    Exit_status = 0\n"),
    ];
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_survives_mangled(&samples, &[0, 1], 2, |code, out| {
        states(code, out, "", &["101.pbs01", "102.pbs01"])
    });
}

#[test]
fn time_limit_and_end_from_walltime_used_and_requested() {
    // `qstat -f -x` as PBS Pro prints a running, a queued and a finished job.
    let out = "Job Id: 101.pbs01.example.org
    Job_Name = jupyterhub-sp-0123456789abcdef01234567
    Job_Owner = alice@login01.example.org
    resources_used.cpupercent = 0
    resources_used.cput = 00:00:02
    resources_used.mem = 51840kb
    resources_used.ncpus = 2
    resources_used.vmem = 412332kb
    resources_used.walltime = 00:10:05
    job_state = R
    queue = workq
    server = pbs01
    exec_host = cn042/0*2
    Resource_List.ncpus = 2
    Resource_List.nodect = 1
    Resource_List.select = 1:ncpus=2:mem=4096mb
    Resource_List.walltime = 01:00:00
    stime = Tue Dec  1 10:00:00 2026

Job Id: 102.pbs01.example.org
    Job_Name = jupyterhub-sp-1123456789abcdef01234567
    job_state = Q
    queue = workq
    comment = Not Running: Insufficient amount of resource: ncpus 
    Resource_List.walltime = 08:00:00

Job Id: 103.pbs01.example.org
    job_state = R
    exec_host = cn043/0
    Resource_List.walltime = 120:00:00

Job Id: 104.pbs01.example.org
    resources_used.walltime = 00:59:58
    job_state = F
    Exit_status = 0
    Resource_List.walltime = 01:00:00

Job Id: 105.pbs01.example.org
    resources_used.walltime = 00:00:10
    job_state = R
    exec_host = cn044/0

";
    let host = FakeHost::for_plugin::<Pbs>();
    host.on("qstat", &["**"]).stdout(out);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ids = [
        "101.pbs01",
        "102.pbs01",
        "103.pbs01",
        "104.pbs01",
        "105.pbs01",
    ];
    let states = plugin("{}").status(&host, &jobs(&ids));
    let JobState::Running(r) = &states[0] else {
        panic!("{states:?}")
    };
    assert_eq!(r.time_limit.limit_secs, Some(3600));
    let end = r.time_limit.ends_at.unwrap();
    assert!((before + 2995..=before + 3000).contains(&end), "{end}");
    // PBS prints no start time it can be read in: `stime` has no zone.
    assert_eq!(r.started_at, None);
    let JobState::Pending(p) = &states[1] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (p.time_limit.limit_secs, p.time_limit.ends_at),
        (Some(28_800), None)
    );
    // Running, no time used reported yet: the limit, no end.
    let JobState::Running(r) = &states[2] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (Some(432_000), None)
    );
    assert!(matches!(&states[3], JobState::Done(_)), "{states:?}");
    let JobState::Running(r) = &states[4] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (r.time_limit.limit_secs, r.time_limit.ends_at),
        (None, None)
    );
}

#[test]
fn status_ids_match_exactly_server_included() {
    let out = "Job Id: 101.serverB\n    job_state = R\n    exec_host = n2/0\n";
    let s = states(
        0,
        out,
        "",
        &["101.serverA", "101.serverB.example.org", "10.serverB"],
    );
    assert!(s[0].starts_with("done:"), "{s:?}");
    assert_eq!(s[1], "running@n2");
    assert!(s[2].starts_with("done:"), "{s:?}");
}

#[test]
fn status_empty_and_jobless_listings_read_alike() {
    for out in ["", "\n"] {
        let s = states(0, out, "", &["101.pbs01"]);
        assert!(s[0].starts_with("done: the job has left"), "{out:?}: {s:?}");
    }
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: Pbs,
    submit: ("qsub", "101.pbs01\n", "101.pbs01"),
    status: ("qstat", "Job Id: 101.pbs01.example.org\n    job_state = R\n    exec_host = node07/0*2\n", "102.pbs01"),
    dead: (2, "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n"),
    cancel: ("qdel", "qdel: Unknown Job Id 101.pbs01\n"),
    scale: (|i| format!("{}.pbs01", i + 1000), |c| {
                let env = format!(
                    "PBS_O_HOME=/home/alice,PBS_O_PATH={},PBS_O_SHELL=/bin/bash",
                    "/usr/bin:".repeat(150)
                );
                wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("Job Id: {id}.example.org\n    Job_Name = jupyterhub-sp-0123456789abcdef01234567\n    Job_Owner = alice@login01.example.org\n    resources_used.walltime = 00:05:00\n    job_state = R\n    queue = workq\n    server = pbs01\n    exec_host = node07/0*2\n    exec_vnode = (node07:ncpus=2:mem=4194304kb)\n    Resource_List.ncpus = 2\n    Resource_List.walltime = 08:00:00\n    Variable_List = {env}\n\n"))
                    .collect()
            }),
}
