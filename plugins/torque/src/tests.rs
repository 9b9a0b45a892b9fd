use super::*;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, FakeHost,
};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin() -> Torque {
    ok(load::<Torque>("{}"))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qstat", &["**"]).exits(code, stdout, stderr);
    let out = plugin().status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

fn xml(jobs: &[&str]) -> String {
    let mut s = String::from("<?xml version=\"1.0\"?>\n<Data>");
    for j in jobs {
        s.push_str(&format!(
            "<Job><Job_Id>{}</Job_Id><Job_Name>jupyterhub</Job_Name><Job_Owner>alice@login1</Job_Owner>{}<queue>batch</queue><server>torque01</server></Job>",
            j.split('|').next().unwrap(),
            j.split('|').nth(1).unwrap_or("")
        ));
    }
    s.push_str("</Data>\n");
    s
}

fn one(inner: &str) -> String {
    states(
        0,
        &xml(&[&format!("123.torque01|{inner}")]),
        "",
        &["123.torque01"],
    )
    .remove(0)
}

#[test]
fn status_is_one_qstat_x() {
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qstat", &["**"]).stdout("");
    plugin().status(&host, &jobs(&["1.t", "2.t"]));
    assert_eq!(host.calls()[0].argv(), vec!["qstat", "-x", "1.t", "2.t"]);
}

#[test]
fn status_queued_held_waiting_transit() {
    assert_eq!(one("<job_state>Q</job_state>"), "pending: pending");
    assert_eq!(
        one("<job_state>H</job_state><Hold_Types>u</Hold_Types>"),
        "pending: held"
    );
    assert_eq!(one("<job_state>W</job_state>"), "pending: waiting");
    assert_eq!(one("<job_state>T</job_state>"), "pending: configuring");
}

#[test]
fn status_running_exec_hosts() {
    assert_eq!(
        one("<job_state>R</job_state><exec_host>node01/0-1+node02/0</exec_host>"),
        "running@node01"
    );
    assert_eq!(
        one("<job_state>R</job_state><exec_host>n7.cluster.org/3</exec_host>"),
        "running@n7.cluster.org"
    );
}

#[test]
fn status_suspended_exiting_completed() {
    assert_eq!(one("<job_state>S</job_state>"), "pending: suspended");
    assert_eq!(
        one("<job_state>E</job_state><exec_host>node01/0</exec_host>"),
        "done: exiting"
    );
    assert_eq!(
        one("<job_state>C</job_state><exit_status>0</exit_status>"),
        "done(0): completed"
    );
    assert_eq!(
        one("<job_state>C</job_state><exit_status>1</exit_status>"),
        "done(1): failed: exit code 1"
    );
    assert_eq!(
        one("<job_state>C</job_state><exit_status>271</exit_status>"),
        "done: cancelled: killed by signal 15"
    );
    assert_eq!(
        one("<job_state>C</job_state><exit_status>-3</exit_status>"),
        "done: failed: could not start (exit status -3)"
    );
}

#[test]
fn status_unknown_ids_and_absent_jobs() {
    let s = states(
        153,
        &xml(&["1.torque01|<job_state>R</job_state>"]),
        "qstat: Unknown Job Id Error 2.torque01\n",
        &["1.torque01", "2.torque01"],
    );
    assert_eq!(s[0], "running@?");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    let s = states(0, "", "", &["3.torque01"]);
    assert!(s[0].starts_with("done: the job has left"), "{s:?}");
}

#[test]
fn status_errors_are_unknown() {
    let s = states(
        1,
        "",
        "Communication failure.\nqstat: cannot connect to server torque01 (errno=111) Connection refused\n",
        &["1.torque01"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("cannot connect"),
        "{s:?}"
    );
    // Not XML where XML was expected.
    let s = states(0, "Job id  Name  User\n----\n", "", &["1.torque01"]);
    assert!(s[0].starts_with("unknown: `qstat`: not XML"), "{s:?}");
    let s = states(0, "<Data><Job><Job_Id>1.t</Job_Id>", "", &["1.t"]);
    assert!(s[0].starts_with("unknown:"), "truncated XML: {s:?}");
    assert!(one("<job_state>Z</job_state>").starts_with("unknown: the scheduler reports"));
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qstat", &["**"])
        .fails(RunError::Failed("spawn".into()));
    assert!(brief(&plugin().status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

fn submit(code: i32, stdout: &str, stderr: &str) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qsub", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("queue", "batch"),
            int("nprocs", 8),
            int("memory", 16),
            int("runtime", 600),
        ],
    );
    let r = plugin().submit(&host, &job).map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_script_on_stdin() {
    let (host, id) = submit(0, "123.torque01.cluster.org\n", "");
    assert_eq!(ok(id), "123.torque01.cluster.org");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["qsub"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "#PBS -q batch\n",
        "#PBS -l nodes=1:ppn=8\n",
        "#PBS -l mem=16384mb\n",
        "#PBS -l walltime=10:00:00\n",
        "#PBS -V\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
}

#[test]
fn submit_with_noise() {
    let (_, id) = submit(0, "\nqsub: submit filter warning\n124.torque01\n", "");
    assert_eq!(ok(id), "124.torque01");
}

#[test]
fn submit_refused() {
    let (_, r) = submit(
        1,
        "",
        "qsub: submit error (Job exceeds queue resource limits MSG=cannot satisfy queue max walltime requirement)\n",
    );
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("exceeds")));
}

#[test]
fn cancel_completed_is_fine() {
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qdel", &["1.t"])
        .exits(153, "", "qdel: Unknown Job Id Error 1.t\n");
    host.on("qdel", &["2.t"]).exits(
        170,
        "",
        "qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE 2.t\n",
    );
    host.on("qdel", &["3.t"])
        .exits(15007, "", "qdel: Unauthorized Request 3.t\n");
    ok(plugin().cancel(&host, &jobs(&["1.t"])[0]));
    ok(plugin().cancel(&host, &jobs(&["2.t"])[0]));
    assert!(plugin().cancel(&host, &jobs(&["3.t"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [xml(&[
        "123.torque01|<job_state>R</job_state><exec_host>node01/0-1+node02/0</exec_host>",
        "124.torque01|<job_state>H</job_state><Hold_Types>u</Hold_Types>",
        "125.torque01|<job_state>C</job_state><exit_status>0</exit_status>",
    ])];
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_survives_mangled(&samples, &[0, 1], 3, |code, out| {
        states(
            code,
            out,
            "",
            &["123.torque01", "124.torque01", "125.torque01"],
        )
    });
}

#[test]
fn time_limit_and_end_from_walltime_remaining() {
    // `qstat -x` as Torque 6 prints it (one line; shortened): a running job
    // with `Walltime.Remaining`, a queued one, a finished one, and a running
    // one from a Torque without `Walltime` (time used instead).
    let out = "<?xml version=\"1.0\"?>\n<Data>\
<Job><Job_Id>72.c0</Job_Id><Job_Name>jupyterhub</Job_Name><Job_Owner>alice@login1</Job_Owner><resources_used><cput>02:07:06</cput><energy_used>0</energy_used><mem>8942880kb</mem><vmem>285471748kb</vmem><walltime>00:02:57</walltime></resources_used><job_state>R</job_state><queue>master</queue><server>c0</server><exec_host>c0/0-43</exec_host><Resource_List><nodes>1:ppn=44</nodes><walltime>120:00:00</walltime><nodect>1</nodect></Resource_List><comment>Job started on Mon Aug 08 at 22:45</comment><etime>1659969957</etime><start_time>1659969957</start_time><Walltime><Remaining>431771</Remaining></Walltime><start_count>1</start_count></Job>\
<Job><Job_Id>73.c0</Job_Id><job_state>Q</job_state><queue>master</queue><Resource_List><nodes>1:ppn=44</nodes><walltime>120:00:00</walltime><nodect>1</nodect></Resource_List><comment>Not Running: Not enough of the right type of nodes are available</comment></Job>\
<Job><Job_Id>74.c0</Job_Id><resources_used><walltime>00:02:14</walltime></resources_used><job_state>C</job_state><exec_host>c0/0-43</exec_host><Resource_List><walltime>120:00:00</walltime></Resource_List><exit_status>0</exit_status><start_time>1659970605</start_time><comp_time>1659970747</comp_time></Job>\
<Job><Job_Id>75.c0</Job_Id><resources_used><walltime>00:20:00</walltime></resources_used><job_state>R</job_state><exec_host>c1/0</exec_host><Resource_List><walltime>01:00:00</walltime></Resource_List></Job>\
<Job><Job_Id>76.c0</Job_Id><job_state>R</job_state><exec_host>c1/1</exec_host><Resource_List><walltime>00:10:00</walltime></Resource_List><start_time>1659969957</start_time><Walltime><Remaining>-12</Remaining></Walltime></Job>\
</Data>\n";
    let host = FakeHost::for_plugin::<Torque>();
    host.on("qstat", &["**"]).stdout(out);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let states = plugin().status(&host, &jobs(&["72.c0", "73.c0", "74.c0", "75.c0", "76.c0"]));
    let JobState::Running(r) = &states[0] else {
        panic!("{states:?}")
    };
    assert_eq!(r.host.as_deref(), Some("c0"));
    assert_eq!(r.started_at, Some(1_659_969_957));
    assert_eq!(r.time_limit.limit_secs, Some(432_000));
    let end = r.time_limit.ends_at.unwrap();
    assert!(
        (before + 431_771..=before + 431_776).contains(&end),
        "{end}"
    );
    let JobState::Pending(p) = &states[1] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (p.time_limit.limit_secs, p.time_limit.ends_at),
        (Some(432_000), None)
    );
    assert!(
        matches!(&states[2], JobState::Done(d) if d.exit_code == Some(0)),
        "{states:?}"
    );
    let JobState::Running(r) = &states[3] else {
        panic!("{states:?}")
    };
    assert_eq!(r.time_limit.limit_secs, Some(3600));
    let end = r.time_limit.ends_at.unwrap();
    assert!((before + 2400..=before + 2405).contains(&end), "{end}");
    // Past its limit, not yet killed: it ends now.
    let JobState::Running(r) = &states[4] else {
        panic!("{states:?}")
    };
    let end = r.time_limit.ends_at.unwrap();
    assert!((before..=before + 5).contains(&end), "{end}");
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: Torque,
    submit: ("qsub", "101.torque01\n", "101.torque01"),
    status: ("qstat", "<Data><Job><Job_Id>101.torque01</Job_Id><job_state>R</job_state><exec_host>node07/0-1</exec_host></Job></Data>\n", "102.torque01"),
    dead: (1, "Cannot connect to default server host 'torque01' - check pbs_server daemon.\n"),
    cancel: ("qdel", "qdel: Unknown Job Id 101.torque01\n"),
    scale: (|i| format!("{}.torque01", i + 1000), |c| {
                let env = format!(
                    "PBS_O_HOME=/home/alice,PBS_O_PATH={}",
                    "/usr/bin:".repeat(150)
                );
                let jobs: String = wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("<Job><Job_Id>{id}</Job_Id><Job_Name>jupyterhub-sp-0123456789abcdef01234567</Job_Name><Job_Owner>alice@login01</Job_Owner><job_state>R</job_state><queue>batch</queue><server>torque01</server><exec_host>node07/0-1</exec_host><Resource_List><nodes>1:ppn=2</nodes><walltime>08:00:00</walltime></Resource_List><Variable_List>{env}</Variable_List><start_time>1764626400</start_time><Walltime><Remaining>28500</Remaining></Walltime></Job>"))
                    .collect();
                format!("<Data>{jobs}</Data>\n")
            }),
}
