use super::*;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, FakeHost,
};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin() -> Moab {
    ok(load::<Moab>("{}"))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<Moab>();
    host.on("checkjob", &["**"]).exits(code, stdout, stderr);
    let out = plugin().status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

/// Jobs as Moab writes them (MJobToXML): the job's attributes on `<job>`,
/// the allocated nodes on its `<req>` child. An `AllocNodeList="…"` in
/// `attrs` goes to the `<req>`, as in real output.
fn xml(jobs: &[&str]) -> String {
    let mut s = String::from("<Data>");
    for j in jobs {
        let (job_attrs, nodes) = match j.find("AllocNodeList=\"") {
            Some(at) => {
                let end = j[at + 15..].find('"').unwrap() + at + 16;
                (format!("{}{}", &j[..at], &j[end..]), j[at..end].to_string())
            }
            None => (j.to_string(), String::new()),
        };
        // Moab's attributes in its order, the test's own replacing them.
        let defaults = [
            ("Account", "proj"),
            ("Class", "batch"),
            ("EEDuration", "0"),
            ("GJID", "x"),
            ("Group", "alice"),
            ("PAL", "torque"),
            ("ReqAWDuration", "28800"),
            ("User", "alice"),
        ];
        let rest: String = defaults
            .iter()
            .filter(|(k, _)| !job_attrs.contains(&format!("{k}=")))
            .map(|(k, v)| format!(" {k}=\"{v}\""))
            .collect();
        s.push_str(&format!(
            "<job {job_attrs}{rest}><req {nodes} ReqNodeDisk=\"0\" ReqNodeMem=\"0\" ReqPartition=\"torque\" ReqProcPerTask=\"1\" TCReqMin=\"1\" /></job>"
        ));
    }
    s.push_str("</Data>\n");
    s
}

fn one(attrs: &str) -> String {
    states(
        0,
        &xml(&[&format!("JobID=\"1234\" {attrs}")]),
        "",
        &["1234"],
    )
    .remove(0)
}

#[test]
fn status_is_one_checkjob_for_the_asked_ids() {
    let host = FakeHost::for_plugin::<Moab>();
    host.on("checkjob", &["**"]).stdout("<Data></Data>");
    plugin().status(&host, &jobs(&["1", "2"]));
    assert_eq!(host.calls()[0].argv(), vec!["checkjob", "--xml", "1", "2"]);
}

#[test]
fn status_idle_held_blocked_starting() {
    assert_eq!(one("State=\"Idle\" EState=\"Idle\""), "pending: pending");
    assert_eq!(one("State=\"UserHold\""), "pending: held");
    assert_eq!(
        one("State=\"Deferred\" BlockReason=\"job violates policy\""),
        "pending: held: job violates policy"
    );
    assert_eq!(one("State=\"Blocked\""), "pending: waiting");
    assert_eq!(
        one("State=\"Starting\" AllocNodeList=\"n01\""),
        "pending: configuring"
    );
}

#[test]
fn status_running_node_lists() {
    assert_eq!(
        one("State=\"Running\" AllocNodeList=\"n01:2,n02:2\""),
        "running@n01"
    );
    assert_eq!(
        one("State=\"Running\" AllocNodeList=\"n05.cluster.org\""),
        "running@n05.cluster.org"
    );
}

#[test]
fn status_suspended_completed_removed_vacated() {
    assert_eq!(one("State=\"Suspended\""), "pending: suspended");
    assert_eq!(
        one("State=\"Completed\" CompletionCode=\"0\""),
        "done(0): completed"
    );
    assert_eq!(
        one("State=\"Completed\" CompletionCode=\"2\""),
        "done(2): failed: exit code 2"
    );
    assert_eq!(one("State=\"Removed\""), "done: cancelled");
    assert_eq!(one("State=\"Vacated\""), "done: failed");
}

#[test]
fn status_host_from_req_job_or_master_host() {
    // Real `mdiag -j --xml` / `checkjob --xml`: the nodes on `<req>`.
    let real = "<Data><job JobID=\"1234\" State=\"Running\" User=\"alice\"><req AllocNodeList=\"n07:2,n08:2\" AllocPartition=\"torque\" ReqProcPerTask=\"2\"></req></job></Data>";
    assert_eq!(states(0, real, "", &["1234"])[0], "running@n07");
    // Older output on the job itself, and MasterHost alone.
    let on_job = "<Data><job JobID=\"1234\" State=\"Running\" AllocNodeList=\"n09\"><req ReqProcPerTask=\"1\"/></job></Data>";
    assert_eq!(states(0, on_job, "", &["1234"])[0], "running@n09");
    let master = "<Data><job JobID=\"1234\" State=\"Running\" MasterHost=\"n10\"/></Data>";
    assert_eq!(states(0, master, "", &["1234"])[0], "running@n10");
}

#[test]
fn status_ids_match_exactly() {
    let s = states(
        0,
        &xml(&["JobID=\"12340\" State=\"Running\" AllocNodeList=\"n1\""]),
        "",
        &["1234", "12340"],
    );
    assert!(s[0].starts_with("done:"), "{s:?}");
    assert_eq!(s[1], "running@n1");
}

#[test]
fn status_moab_prefixed_ids_match() {
    let s = states(
        0,
        &xml(&["JobID=\"1234\" State=\"Running\" AllocNodeList=\"n1\""]),
        "",
        &["Moab.1234", "Moab.99"],
    );
    assert_eq!(s[0], "running@n1");
    assert!(s[1].starts_with("done: the job has left"), "{s:?}");
}

#[test]
fn status_unknown_ids_are_gone_others_read() {
    let s = states(
        1,
        &xml(&["JobID=\"1234\" State=\"Running\" AllocNodeList=\"n1\""]),
        "ERROR:    invalid job specified (1235)\n",
        &["1234", "1235"],
    );
    assert_eq!(s[0], "running@n1");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    let s = states(1, "", "ERROR:  cannot locate job '77'\n", &["77"]);
    assert!(
        s[0].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
}

#[test]
fn status_server_down_is_unknown() {
    let s = states(
        1,
        "",
        "ERROR:    cannot connect to Moab server 'moab01' (port 42559)\n",
        &["1234"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("cannot connect"),
        "{s:?}"
    );
}

#[test]
fn status_non_xml_is_unknown() {
    let s = states(0, "job 1234 not found\n", "", &["1234"]);
    assert!(s[0].starts_with("unknown: `checkjob`: not XML"), "{s:?}");
    let s = states(0, "<Data><job JobID=\"1\"", "", &["1234"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    assert!(one("State=\"Frobbed\"").starts_with("unknown: the scheduler reports"));
    let host = FakeHost::for_plugin::<Moab>();
    host.on("checkjob", &["**"])
        .fails(RunError::TimedOut("checkjob".into()));
    assert!(brief(&plugin().status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

#[test]
fn time_limit_and_end_from_req_aw_duration_and_start_time() {
    let out = xml(&[
        // Started at 10:00, suspended 5 minutes, 8 hours allowed.
        "AWDuration=\"1392\" JobID=\"1234\" MasterHost=\"n01\" ReqAWDuration=\"28800\" RsvStartTime=\"1764583200\" StartTime=\"1764583200\" State=\"Running\" SubmissionTime=\"1764583190\" SuspendDuration=\"300\" AllocNodeList=\"n01:2\"",
        "BlockReason=\"IdlePolicy\" JobID=\"1235\" ReqAWDuration=\"14400\" StartTime=\"0\" State=\"Idle\" SuspendDuration=\"0\"",
        // No start time: the time left from the active time.
        "AWDuration=\"600\" JobID=\"1236\" ReqAWDuration=\"3600\" State=\"Running\" AllocNodeList=\"n02\"",
        // Moab's "infinite" (MMAX_TIME): no limit.
        "AWDuration=\"10\" JobID=\"1237\" ReqAWDuration=\"2140000000\" StartTime=\"1764583200\" State=\"Running\" AllocNodeList=\"n03\"",
        "JobID=\"1238\" ReqAWDuration=\"INFINITE\" StartTime=\"junk\" State=\"Running\" AllocNodeList=\"n04\"",
    ]);
    let host = FakeHost::for_plugin::<Moab>();
    host.on("checkjob", &["**"]).stdout(&out);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let states = plugin().status(&host, &jobs(&["1234", "1235", "1236", "1237", "1238"]));
    let JobState::Running(r) = &states[0] else {
        panic!("{states:?}")
    };
    assert_eq!(r.host.as_deref(), Some("n01"));
    assert_eq!(r.started_at, Some(1_764_583_200));
    assert_eq!(r.time_limit.limit_secs, Some(28_800));
    assert_eq!(r.time_limit.ends_at, Some(1_764_583_200 + 300 + 28_800));
    let JobState::Pending(p) = &states[1] else {
        panic!("{states:?}")
    };
    assert_eq!(
        (p.time_limit.limit_secs, p.time_limit.ends_at),
        (Some(14_400), None)
    );
    let JobState::Running(r) = &states[2] else {
        panic!("{states:?}")
    };
    assert_eq!(r.started_at, None);
    let end = r.time_limit.ends_at.unwrap();
    assert!((before + 3000..=before + 3005).contains(&end), "{end}");
    for s in &states[3..] {
        let JobState::Running(r) = s else {
            panic!("{states:?}")
        };
        assert_eq!(
            (r.time_limit.limit_secs, r.time_limit.ends_at),
            (None, None),
            "{s:?}"
        );
    }
}

#[test]
fn invalid_job_errors_in_the_xml_are_gone() {
    // Moab may answer an id it no longer knows inside the XML
    // (`<Error code="700">`), with or without the jobs it does know.
    let with_jobs = "<Data><job JobID=\"1234\" State=\"Running\"><req AllocNodeList=\"n1\"/></job><Error code=\"700\">server rejected request - invalid job specified: 1235</Error></Data>\n";
    let s = states(0, with_jobs, "", &["1234", "1235"]);
    assert_eq!(s[0], "running@n1");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    let alone =
        "<Error code=\"700\">server rejected request - invalid job specified: 1235</Error>\n";
    let s = states(1, alone, "", &["1235"]);
    assert!(
        s[0].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    // The others asked with it are not known to be done.
    let s = states(1, alone, "", &["1234", "1235"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    assert!(
        s[1].starts_with("done: the scheduler no longer knows"),
        "{s:?}"
    );
    // Another error: the jobs it did not list are unknown, never done.
    let other = "<Data><job JobID=\"1234\" State=\"Idle\"/><Error code=\"400\">server rejected request - cannot access job</Error></Data>\n";
    let s = states(0, other, "", &["1234", "1236"]);
    assert_eq!(s[0], "pending: pending");
    assert!(
        s[1].starts_with("unknown:") && s[1].contains("cannot access job"),
        "{s:?}"
    );
}

#[test]
fn gone_reads_every_spelling() {
    assert_eq!(
        gone("ERROR:  invalid job specified (1235)").as_deref(),
        Some("1235")
    );
    assert_eq!(
        gone("ERROR:  cannot locate job '77'").as_deref(),
        Some("77")
    );
    assert_eq!(
        gone("server rejected request - invalid job specified: Moab.9").as_deref(),
        Some("Moab.9")
    );
    assert_eq!(
        gone("<Error code=\"700\">server rejected request - invalid job specified: 12</Error></Data>").as_deref(),
        Some("12")
    );
    assert_eq!(gone("ERROR:  invalid job specified"), None);
    assert_eq!(gone("job 12 is running"), None);
}

fn submit(code: i32, stdout: &str, stderr: &str) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<Moab>();
    host.on("msub", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("queue", "batch"),
            int("nprocs", 4),
            int("memory", 8),
            int("runtime", 120),
        ],
    );
    let r = plugin().submit(&host, &job).map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_blank_lines_then_id() {
    let (host, id) = submit(0, "\n\n1234\n\n", "");
    assert_eq!(ok(id), "1234");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["msub"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "#MSUB -q batch\n",
        "#MSUB -l nodes=1:ppn=4\n",
        "#MSUB -l mem=8192mb\n",
        "#MSUB -l walltime=02:00:00\n",
        "#MSUB -V\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
}

#[test]
fn submit_moab_prefixed_id() {
    let (_, id) = submit(0, "\nMoab.1235\n", "");
    assert_eq!(ok(id), "Moab.1235");
}

#[test]
fn submit_rejected() {
    let (_, r) = submit(
        1,
        "",
        "ERROR:    cannot submit job - invalid class specified\n",
    );
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("invalid class")));
    let (_, r) = submit(0, "\n\n", "");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("no job id")));
}

#[test]
fn cancel_is_mjobctl_c() {
    let host = FakeHost::for_plugin::<Moab>();
    host.on("mjobctl", &["-c", "1"])
        .stdout("job '1' cancelled\n");
    host.on("mjobctl", &["-c", "2"])
        .exits(1, "", "ERROR:    invalid job specified (2)\n");
    host.on("mjobctl", &["-c", "3"]).exits(
        1,
        "",
        "ERROR:    user alice is not authorized to cancel job 3\n",
    );
    ok(plugin().cancel(&host, &jobs(&["1"])[0]));
    ok(plugin().cancel(&host, &jobs(&["2"])[0]));
    assert!(plugin().cancel(&host, &jobs(&["3"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [xml(&[
        "JobID=\"1234\" State=\"Running\" AllocNodeList=\"n1,n2\"",
        "JobID=\"1235\" State=\"Idle\"",
        "JobID=\"1236\" State=\"Completed\" CompletionCode=\"0\"",
    ])];
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_survives_mangled(&samples, &[0, 1], 3, |code, out| {
        states(code, out, "", &["1234", "1235", "1236"])
    });
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: Moab,
    submit: ("msub", "\n101\n", "101"),
    status: ("checkjob", "<Data><job JobID=\"101\" State=\"Running\"><req AllocNodeList=\"node07:2\"/></job></Data>\n", "102"),
    dead: (1, "ERROR:    cannot connect to Moab server 'moab01' (port 42559)\n"),
    cancel: ("mjobctl", "ERROR:    invalid job specified (101)\n"),
    scale: (|i| (i + 1000).to_string(), |c| {
                assert_eq!(c.args[0], "--xml");
                let jobs: String = wasmspawner_sdk::testing::asked_ids(c)
                    .iter()
                    .map(|id| format!("<job AWDuration=\"120\" Account=\"proj\" Class=\"batch\" DRM=\"torque\" DRMJID=\"{id}.torque01\" EEDuration=\"3\" EState=\"Running\" Flags=\"RESTARTABLE\" GJID=\"{id}\" Group=\"alice\" IWD=\"/home/alice\" JobID=\"{id}\" JobName=\"jupyterhub-sp-0123456789abcdef01234567\" MasterHost=\"node07\" PAL=\"torque\" QOS=\"normal\" ReqAWDuration=\"28800\" ReqNodes=\"1\" ReqProcs=\"2\" RsvStartTime=\"1764626400\" StartCount=\"1\" StartPriority=\"1\" StartTime=\"1764626400\" State=\"Running\" StatMSUtl=\"0.000\" StatPSDed=\"240.000\" StatPSUtl=\"1.200\" SubmitTime=\"1764626397\" SuspendDuration=\"0\" SysPrio=\"0\" User=\"alice\" UserPrio=\"0\"><req AllocNodeList=\"node07:2\" AllocPartition=\"torque\" ReqNodeDisk=\"0\" ReqNodeMem=\"0\" ReqNodeProc=\"0\" ReqNodeSwap=\"0\" ReqPartition=\"torque\" ReqProcPerTask=\"2\" TCReqMin=\"1\" UtilMem=\"312\" UtilProc=\"0.01\" UtilSwap=\"0\"></req></job>"))
                    .collect();
                format!("<Data>{jobs}</Data>\n")
            }),
}
