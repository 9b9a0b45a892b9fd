use super::*;
use wasmspawner_sdk::testing::{
    assert_survives_mangled, brief, int, job_spec, jobs, ok, text, FakeHost,
};
use wasmspawner_sdk::{load, JobState, Plugin, PluginError, RunError};

fn plugin() -> GridEngine {
    ok(load::<GridEngine>("{}"))
}

fn states(code: i32, stdout: &str, stderr: &str, ids: &[&str]) -> Vec<String> {
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qstat", &["**"]).exits(code, stdout, stderr);
    let out = plugin().status(&host, &jobs(ids));
    assert_eq!(host.calls().len(), 1);
    out.iter().map(brief).collect()
}

/// `qstat -xml` with running jobs (`queue_info`) and pending ones (`job_info`).
fn xml(running: &[(&str, &str, &str)], pending: &[(&str, &str)]) -> String {
    let mut s = String::from("<?xml version='1.0'?>\n<job_info  xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd\">\n  <queue_info>\n");
    for (id, st, q) in running {
        s.push_str(&format!("    <job_list state=\"running\">\n      <JB_job_number>{id}</JB_job_number>\n      <JAT_prio>0.50500</JAT_prio>\n      <JB_name>jupyterhub</JB_name>\n      <JB_owner>alice</JB_owner>\n      <state>{st}</state>\n      <JAT_start_time>2026-11-22T04:47:54</JAT_start_time>\n      <queue_name>{q}</queue_name>\n      <slots>1</slots>\n    </job_list>\n"));
    }
    s.push_str("  </queue_info>\n  <job_info>\n");
    for (id, st) in pending {
        s.push_str(&format!("    <job_list state=\"pending\">\n      <JB_job_number>{id}</JB_job_number>\n      <JAT_prio>0.00000</JAT_prio>\n      <JB_name>jupyterhub</JB_name>\n      <JB_owner>alice</JB_owner>\n      <state>{st}</state>\n      <JB_submission_time>2026-11-22T04:47:50</JB_submission_time>\n      <queue_name></queue_name>\n      <slots>1</slots>\n    </job_list>\n"));
    }
    s.push_str("  </job_info>\n</job_info>\n");
    s
}

#[test]
fn status_is_one_qstat_for_the_users() {
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qstat", &["**"]).stdout(&xml(&[], &[]));
    let mut js = jobs(&["1", "2", "3"]);
    js[1].user = "bob".into();
    plugin().status(&host, &js);
    assert_eq!(
        host.calls()[0].argv(),
        vec!["qstat", "-xml", "-r", "-u", "alice,bob"]
    );
}

#[test]
fn time_limit_from_hard_h_rt_request() {
    // `qstat -xml -r`: each job's requests after its summary.
    let out = "<?xml version='1.0'?>
<job_info  xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd\">
  <queue_info>
    <job_list state=\"running\">
      <JB_job_number>88</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>jupyterhub-sp-0123456789abcdef01234567</JB_name>
      <JB_owner>alice</JB_owner>
      <JB_project>project_a</JB_project>
      <state>r</state>
      <JAT_start_time>2026-11-22T04:47:54</JAT_start_time>
      <queue_name>all.q@node07</queue_name>
      <slots>2</slots>
      <full_job_name>jupyterhub-sp-0123456789abcdef01234567</full_job_name>
      <requested_pe name=\"smp\">2</requested_pe>
      <granted_pe name=\"smp\">2</granted_pe>
      <hard_request name=\"h_vmem\" resource_contribution=\"0.000000\">4096M</hard_request>
      <hard_request name=\"h_rt\" resource_contribution=\"0.000000\">28800</hard_request>
      <hard_req_queue>all.q</hard_req_queue>
    </job_list>
    <job_list state=\"running\">
      <JB_job_number>89</JB_job_number>
      <JB_owner>alice</JB_owner>
      <state>r</state>
      <queue_name>all.q@node08</queue_name>
      <slots>1</slots>
      <full_job_name>jupyterhub</full_job_name>
      <hard_request name=\"s_rt\" resource_contribution=\"0.000000\">3000</hard_request>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state=\"pending\">
      <JB_job_number>1045</JB_job_number>
      <JB_owner>alice</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-22T04:50:05</JB_submission_time>
      <slots>1</slots>
      <full_job_name>jupyterhub</full_job_name>
      <hard_request name=\"h_rt\" resource_contribution=\"0.000000\">01:00:00</hard_request>
      <hard_request name=\"s_rt\" resource_contribution=\"0.000000\">3000</hard_request>
    </job_list>
    <job_list state=\"pending\">
      <JB_job_number>1046</JB_job_number>
      <JB_owner>alice</JB_owner>
      <state>qw</state>
      <hard_request name=\"h_rt\" resource_contribution=\"0.000000\">INFINITY</hard_request>
    </job_list>
  </job_info>
</job_info>
";
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qstat", &["**"]).stdout(out);
    let states = plugin().status(&host, &jobs(&["88", "89", "1045", "1046"]));
    let limits: Vec<(Option<u64>, Option<u64>)> = states
        .iter()
        .map(|s| match s {
            JobState::Running(r) => (r.time_limit.limit_secs, r.time_limit.ends_at),
            JobState::Pending(p) => (p.time_limit.limit_secs, p.time_limit.ends_at),
            other => panic!("{other:?}"),
        })
        .collect();
    // No end: JAT_start_time is the qmaster's local time, without a zone.
    assert_eq!(
        limits,
        vec![
            (Some(28_800), None),
            (None, None),
            (Some(3600), None),
            (None, None)
        ]
    );
}

#[test]
fn status_pending_held_error() {
    let s = states(
        0,
        &xml(&[], &[("1", "qw"), ("2", "hqw"), ("3", "Eqw")]),
        "",
        &["1", "2", "3"],
    );
    assert_eq!(s[0], "pending: pending");
    assert_eq!(s[1], "pending: held");
    assert_eq!(s[2], "pending: held: error state (see qstat -j)");
}

#[test]
fn status_running_and_transferring() {
    let s = states(
        0,
        &xml(
            &[
                ("1", "r", "all.q@node01.cluster.org"),
                ("2", "t", "gpu.q@node02"),
                ("3", "Rr", "all.q@vm"),
            ],
            &[],
        ),
        "",
        &["1", "2", "3"],
    );
    assert_eq!(
        s,
        vec![
            "running@node01.cluster.org",
            "pending: configuring",
            "running@vm"
        ]
    );
}

#[test]
fn status_suspended_and_deleting() {
    let s = states(
        0,
        &xml(
            &[
                ("1", "s", "all.q@n1"),
                ("2", "S", "all.q@n1"),
                ("3", "T", "all.q@n1"),
                ("4", "dr", "all.q@n1"),
            ],
            &[],
        ),
        "",
        &["1", "2", "3", "4"],
    );
    assert_eq!(
        s[..3],
        [
            "pending: suspended",
            "pending: suspended",
            "pending: suspended"
        ]
    );
    assert_eq!(s[3], "done: exiting");
}

#[test]
fn status_absent_after_success_is_done() {
    let s = states(0, &xml(&[("1", "r", "all.q@n1")], &[]), "", &["1", "2"]);
    assert_eq!(s[0], "running@n1");
    assert!(
        s[1].starts_with("done: the job has left the queue"),
        "{s:?}"
    );
}

#[test]
fn status_qmaster_down_is_unknown() {
    let s = states(
        1,
        "",
        "error: commlib error: got select error (Connection refused)\nerror: unable to send message to qmaster using port 6444 on host \"vm\": got send error\n",
        &["1"],
    );
    assert!(
        s[0].starts_with("unknown:") && s[0].contains("commlib"),
        "{s:?}"
    );
}

#[test]
fn status_non_xml_is_unknown_never_done() {
    let s = states(0, "job-ID  prior   name  user  state\n", "", &["1"]);
    assert!(s[0].starts_with("unknown: `qstat`: not XML"), "{s:?}");
    let s = states(0, "<job_info><queue_info>", "", &["1"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    let s = states(0, "<?xml version='1.0'?><unexpected/>", "", &["1"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
}

#[test]
fn status_error_output_with_rc0_is_unknown() {
    let s = states(0, &xml(&[], &[]), "error: access denied\n", &["1"]);
    assert!(s[0].starts_with("unknown:"), "{s:?}");
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qstat", &["**"])
        .fails(RunError::TimedOut("qstat".into()));
    assert!(brief(&plugin().status(&host, &jobs(&["1"]))[0]).starts_with("unknown:"));
}

#[test]
fn status_unrecognised_state_is_unknown() {
    let s = states(0, &xml(&[], &[("1", "Q?")]), "", &["1"]);
    assert!(s[0].starts_with("unknown: the scheduler reports"), "{s:?}");
}

fn submit(
    code: i32,
    stdout: &str,
    stderr: &str,
    config: &str,
) -> (FakeHost, Result<String, PluginError>) {
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qsub", &["**"]).exits(code, stdout, stderr);
    let job = job_spec(
        "alice",
        vec![
            text("queue", "all.q"),
            int("nprocs", 4),
            int("memory", 2),
            int("runtime", 30),
        ],
    );
    let r = ok(load::<GridEngine>(config))
        .submit(&host, &job)
        .map(|s| s.job_id);
    (host, r)
}

#[test]
fn submit_terse_script_on_stdin() {
    let (host, id) = submit(0, "55\n", "", r#"{"vars":{"pe":"mpi"}}"#);
    assert_eq!(ok(id), "55");
    let c = &host.calls()[0];
    assert_eq!(c.argv(), vec!["qsub", "-terse"]);
    assert!(c.command.spawn_env);
    let s = c.stdin_str();
    for l in [
        "#$ -q all.q\n",
        "#$ -pe mpi 4\n",
        "#$ -l h_vmem=2048M\n",
        "#$ -l h_rt=00:30:00\n",
        "#$ -V\n",
        "#$ -wd /home/alice\n",
    ] {
        assert!(s.contains(l), "{l:?} not in\n{s}");
    }
}

#[test]
fn submit_classic_message_and_default_pe() {
    let (host, id) = submit(
        0,
        "Your job 56 (\"jupyterhub\") has been submitted\n",
        "",
        "{}",
    );
    assert_eq!(ok(id), "56");
    assert!(host.calls()[0].stdin_str().contains("#$ -pe smp 4\n"));
}

#[test]
fn submit_rejected() {
    let (_, r) = submit(1, "", "Unable to run job: job rejected: your user id 0 is lower than minimum user id 1000 of cluster configuration\nExiting.\n", "{}");
    assert!(matches!(r, Err(PluginError::Scheduler(m)) if m.contains("rejected")));
}

#[test]
fn cancel_gone_is_fine() {
    let host = FakeHost::for_plugin::<GridEngine>();
    host.on("qdel", &["1"])
        .stdout("alice has registered the job 1 for deletion\n");
    host.on("qdel", &["2"])
        .exits(1, "", "denied: job \"2\" does not exist\n");
    host.on("qdel", &["3"]).exits(
        1,
        "",
        "alice - you do not have the necessary privileges to delete the job \"3\"\n",
    );
    ok(plugin().cancel(&host, &jobs(&["1"])[0]));
    ok(plugin().cancel(&host, &jobs(&["2"])[0]));
    assert!(plugin().cancel(&host, &jobs(&["3"])[0]).is_err());
}

/// Broken, cut-off or hostile scheduler output never panics the parser and
/// always gets one answer per job, whatever the exit code.
#[test]
fn status_survives_mangled_output() {
    let samples = [xml(
        &[
            ("1", "r", "all.q@node01"),
            ("2", "t", "gpu.q@node02.example.org"),
        ],
        &[("3", "qw"), ("4", "Eqw")],
    )];
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_survives_mangled(&samples, &[0, 1], 4, |code, out| {
        states(code, out, "", &["1", "2", "3", "4"])
    });
}

// The tests every batch plugin shares (declaration, submit, status by id
// at scale, dead controller, cancel), on a FakeHost that checks each call
// against this plugin's declaration.
wasmspawner_sdk::scheduler_test_suite! {
    plugin: GridEngine,
    submit: ("qsub", "101\n", "101"),
    status: ("qstat", "<?xml version='1.0'?>\n<job_info><queue_info><job_list state=\"running\"><JB_job_number>101</JB_job_number><JB_owner>alice</JB_owner><state>r</state><queue_name>all.q@node07</queue_name></job_list></queue_info><job_info></job_info></job_info>\n", "102"),
    dead: (1, "error: commlib error: got select error (Connection refused)\n"),
    cancel: ("qdel", "denied: job \"101\" does not exist\n"),
    scale: (|i| (i + 1000).to_string(), |c| {
                // A site with 50 000 queued jobs of 500 other users besides
                // the hub's: `-u` prints only the asked owners' jobs.
                let owners: Vec<String> = c.args
                    [c.args.iter().position(|a| a == "-u").unwrap() + 1]
                    .split(',')
                    .map(str::to_string)
                    .collect();
                let mut s = String::from("<?xml version='1.0'?>\n<job_info xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd\">\n  <queue_info>\n");
                for o in &owners {
                    if let Some(u) = o.strip_prefix("user") {
                        let u: usize = u.parse().unwrap();
                        for i in u * 5..u * 5 + 5 {
                            s.push_str(&format!("    <job_list state=\"running\">\n      <JB_job_number>{}</JB_job_number>\n      <JAT_prio>0.55500</JAT_prio>\n      <JB_name>jupyterhub-sp-0123456789abcdef01234567</JB_name>\n      <JB_owner>{o}</JB_owner>\n      <state>r</state>\n      <JAT_start_time>2026-12-01T22:00:00</JAT_start_time>\n      <queue_name>all.q@node07.example.org</queue_name>\n      <slots>2</slots>\n      <full_job_name>jupyterhub-sp-0123456789abcdef01234567</full_job_name>\n      <requested_pe name=\"smp\">2</requested_pe>\n      <granted_pe name=\"smp\">2</granted_pe>\n      <hard_request name=\"h_vmem\" resource_contribution=\"0.000000\">4096M</hard_request>\n      <hard_request name=\"h_rt\" resource_contribution=\"0.000000\">08:00:00</hard_request>\n      <hard_req_queue>all.q</hard_req_queue>\n    </job_list>\n", i + 1000));
                        }
                    }
                    if let Some(u) = o.strip_prefix("other") {
                        let u: usize = u.parse().unwrap();
                        for i in 0..100 {
                            s.push_str(&format!("    <job_list state=\"pending\"><JB_job_number>{}</JB_job_number><JB_owner>{o}</JB_owner><state>qw</state><hard_request name=\"h_rt\" resource_contribution=\"0.000000\">86400</hard_request></job_list>\n", 100_000 + u * 100 + i));
                        }
                    }
                }
                s.push_str("  </queue_info>\n  <job_info>\n  </job_info>\n</job_info>\n");
                s
            }),
}

/// Groups are whole owners, at most `per` jobs: 10 000 jobs take the same
/// 16 commands whether 10 000 users or 1 000 own them, well within the
/// host's `limits.max_runs_per_call` (32).
#[test]
fn status_groups_by_jobs_not_owners() {
    let mk = |owners: usize| -> Vec<wasmspawner_sdk::Job> {
        (0..10_000)
            .map(|i| wasmspawner_sdk::Job {
                job_id: (1000 + i).to_string(),
                user: format!("u{}", i % owners),
                state: String::new(),
            })
            .collect()
    };
    for owners in [10_000, 1_000] {
        let jobs = mk(owners);
        let groups = owner_groups(&jobs, 640);
        assert_eq!(groups.len(), 16, "{owners} owners");
        let mut seen = std::collections::BTreeMap::new();
        for (g, group) in groups.iter().enumerate() {
            assert!(
                group.len() <= 640,
                "{owners} owners: a group of {}",
                group.len()
            );
            for &i in group {
                // An owner's jobs never span two commands.
                assert_eq!(*seen.entry(jobs[i].user.clone()).or_insert(g), g);
            }
        }
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 10_000);
    }
    // An owner with more jobs than `per` is asked alone, not split.
    let mut jobs = mk(10_000);
    for j in &mut jobs[..700] {
        j.user = "many".into();
    }
    let groups = owner_groups(&jobs, 640);
    let many: Vec<_> = groups
        .iter()
        .filter(|g| g.iter().any(|&i| jobs[i].user == "many"))
        .collect();
    assert_eq!(many.len(), 1);
    assert!(many[0].iter().all(|&i| jobs[i].user == "many"));
}
