//! [`scheduler_test_suite!`]: the tests every batch scheduler plugin shares,
//! generated from a few recorded answers, each run on a
//! [`crate::testing::FakeHost::for_plugin`] (so a call outside the plugin's
//! declaration fails the test, as the real gate would deny it).

/// The shared tests of a batch scheduler plugin, as a module `suite`:
///
/// - its declaration: the three programs, the spawn's environment for
///   submit only;
/// - submit: the script on stdin, the spawn's environment asked for and
///   never in argv, the job named with its spawn id, the id parsed;
/// - status: a running job with its host and an absent one `done`, in one
///   command; no jobs, no command; an empty listing is job-less; a dead
///   controller, a capability error and an answer cut at the output cap are
///   `unknown`, never `done`;
/// - status at scale: 100 and 10 000 jobs by id, within the 1 MiB output
///   cap and 32 commands (the numbers printed);
/// - cancel: success, and "already gone" is success.
///
/// ```ignore
/// wasmspawner_sdk::scheduler_test_suite! {
///     plugin: Slurm,
///     submit: ("sbatch", "42\n", "42"),
///     status: ("squeue", "42|RUNNING|node07|node07|N/A|None\n", "43"),
///     dead: (1, "slurm_load_jobs error: Unable to contact slurm controller\n"),
///     cancel: ("scancel", "scancel: error: Kill job error on job id 42: Invalid job id specified\n"),
///     scale: (|i| i.to_string(), |cmd| /* the records of the asked ids */),
/// }
/// ```
#[macro_export]
macro_rules! scheduler_test_suite {
    (
        plugin: $ty:ty,
        submit: ($submit:expr, $submitted:expr, $job_id:expr),
        status: ($status:expr, $running:expr, $absent:expr),
        dead: ($dead_code:expr, $dead_err:expr),
        cancel: ($cancel:expr, $cancel_gone:expr),
        scale: ($scale_id:expr, $scale_answer:expr $(,)?) $(,)?
    ) => {
        #[cfg(test)]
        mod suite {
            use super::*;
            use $crate::testing::{brief, job_spec, jobs, FakeHost};
            use $crate::{JobState, Plugin, RunError};

            fn plugin() -> $ty {
                $crate::testing::ok($crate::load::<$ty>("{}"))
            }

            fn declared_host() -> FakeHost {
                FakeHost::for_plugin::<$ty>()
            }

            #[test]
            fn declares_its_three_programs_spawn_env_for_submit_only() {
                let d = <$ty as Plugin>::describe();
                let caps = $crate::DeclaredCapabilities::from(d.capabilities.clone());
                let progs = &caps.programs;
                for p in [$submit, $status, $cancel] {
                    assert!(progs.iter().any(|u| u.program == p), "{p} not declared: {progs:?}");
                }
                for u in progs {
                    assert_eq!(u.spawn_env, u.program == $submit, "{u:?}");
                }
                assert_eq!(d.api_version, $crate::API_VERSION);
            }

            #[test]
            fn submit_env_never_in_argv_job_named_with_its_spawn() {
                let host = declared_host();
                host.on($submit, &["**"]).stdout($submitted);
                let job = job_spec("alice", vec![]);
                let id = $crate::testing::ok(plugin().submit(&host, &job)).job_id;
                assert_eq!(id, $job_id);
                let call = &host.calls()[0];
                assert!(call.command.spawn_env);
                assert!(call.argv().iter().all(|a| !a.contains("JUPYTERHUB_API_TOKEN=")));
                let script = call.stdin_str();
                assert!(script.contains("jupyterhub-spawn-test"), "{script}");
                assert!(script.contains("jupyterhub-singleuser"), "{script}");
            }

            fn states(code: i32, stdout: &str, stderr: &str) -> Vec<String> {
                let host = declared_host();
                host.on($status, &["**"]).exits(code, stdout, stderr);
                let s = plugin().status(&host, &jobs(&[$job_id, $absent]));
                assert_eq!(host.calls().len(), 1);
                s.iter().map(brief).collect()
            }

            #[test]
            fn status_running_and_absent_in_one_command() {
                let s = states(0, $running, "");
                assert!(s[0].starts_with("running@node07"), "{s:?}");
                assert!(s[1].starts_with("done:"), "{s:?}");
            }

            #[test]
            fn status_of_no_jobs_runs_nothing() {
                let host = declared_host();
                assert!(plugin().status(&host, &[]).is_empty());
                assert!(host.calls().is_empty());
            }

            #[test]
            fn status_empty_listing_is_jobless() {
                for out in ["", "\n"] {
                    let s = states(0, out, "");
                    assert!(s.iter().all(|s| s.starts_with("done: the job has left")), "{out:?}: {s:?}");
                }
            }

            #[test]
            fn status_dead_controller_errors_and_cut_answers_are_unknown() {
                let s = states($dead_code, "", $dead_err);
                assert!(s.iter().all(|s| s.starts_with("unknown:")), "{s:?}");
                let host = declared_host();
                host.on($status, &["**"]).fails(RunError::TimedOut($status.into()));
                let s = plugin().status(&host, &jobs(&[$job_id]));
                assert!(matches!(&s[0], JobState::Unknown(_)), "{s:?}");
                let host = declared_host();
                host.output_cap(8);
                host.on($status, &["**"]).stdout($running);
                let s = plugin().status(&host, &jobs(&[$job_id]));
                assert!(matches!(&s[0], JobState::Unknown(w) if w.contains("output cap")), "{s:?}");
            }

            #[test]
            fn status_by_id_at_scale() {
                for n in [100, 10_000] {
                    let run = $crate::testing::status_at_scale(
                        n,
                        $status,
                        $scale_id,
                        |i| format!("user{}", i / 5),
                        $scale_answer,
                        |host, jobs| plugin().status(host, jobs),
                    );
                    assert!(!run.truncated, "{run}");
                    assert!(run.calls <= 32, "{run}");
                    for (i, s) in run.states.iter().enumerate() {
                        assert!(
                            matches!(s, JobState::Running(r) if r.host.is_some()),
                            "job {i}: {s:?}"
                        );
                    }
                }
            }

            #[test]
            fn cancel_and_cancel_of_a_gone_job_succeed() {
                let host = declared_host();
                host.on($cancel, &["**"]).stdout("");
                $crate::testing::ok(plugin().cancel(&host, &jobs(&[$job_id])[0]));
                let host = declared_host();
                host.on($cancel, &["**"]).exits(1, "", $cancel_gone);
                $crate::testing::ok(plugin().cancel(&host, &jobs(&[$job_id])[0]));
                assert!(host.calls()[0].argv().iter().any(|a| a == $job_id));
            }
        }
    };
}
