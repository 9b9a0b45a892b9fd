//! The `local` plugin: runs the single-user server as a detached process on
//! the host, like JupyterHub's LocalProcessSpawner, through the same
//! lifecycle as a batch job. It needs no cluster, which makes it the quick
//! start and the test bed.
//!
//! Site config (all optional):
//! ```toml
//! [instances.local.config]
//! interfaces = ["lab", "notebook"]  # choices of the "interface" field
//! workdir = "home"                  # "home" (the user's home) or an absolute path
//! extra_args = []                   # appended to the server command
//! ```
//!
//! The chosen interface reaches the server as `JUPYTERHUB_DEFAULT_URL`, so
//! grant that variable: `[instances.local.grants] env = ["JUPYTERHUB_DEFAULT_URL"]`.

use serde::Deserialize;
use wasmspawner_sdk::options::field_error;
use wasmspawner_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub workdir: String,
    pub extra_args: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: vec!["lab".into(), "notebook".into()],
            workdir: "home".into(),
            extra_args: Vec::new(),
        }
    }
}

pub struct Local {
    config: Config,
}

const INTERFACES: &[(&str, &str, &str)] = &[
    ("lab", "JupyterLab", "/lab"),
    ("notebook", "Jupyter Notebook", "/tree"),
];

impl Plugin for Local {
    type Config = Config;

    fn describe() -> Descriptor {
        Descriptor {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            description: "Runs the single-user server as a local process on the host.".into(),
            capabilities: wasmspawner_sdk::DeclaredCapabilities {
                programs: vec![],
                ssh: vec![],
                // The server command is the hub's; the operator grants which.
                detached: vec![ProgramUse {
                    program: "*".into(),
                    args: vec!["**".into()],
                    spawn_env: true,
                }],
            }
            .into(),
        }
    }

    fn new(config: Config) -> Result<Self, PluginError> {
        if let Some(bad) = config
            .interfaces
            .iter()
            .find(|i| !INTERFACES.iter().any(|(id, _, _)| id == *i))
        {
            return Err(PluginError::Config(format!(
                "interfaces: unknown interface {bad:?}; use any of \"lab\", \"notebook\""
            )));
        }
        if config.workdir != "home" && !config.workdir.starts_with('/') {
            return Err(PluginError::Config(format!(
                "workdir: {:?} is neither \"home\" nor an absolute path",
                config.workdir
            )));
        }
        Ok(Local { config })
    }

    fn form(&self, _host: &dyn Host, _user: &User) -> Result<FormSchema, PluginError> {
        let choices = INTERFACES
            .iter()
            .filter(|(id, _, _)| self.config.interfaces.iter().any(|i| i == id))
            .map(|(id, label, _)| (*id, *label));
        let mut fields = vec![choice_field("interface", "Interface", choices)
            .help("What opens when your server starts.")
            .required()];
        if let Some(first) = self.config.interfaces.first() {
            fields[0] = fields[0].clone().default_value(first.clone());
        }
        fields.push(
            boolean_field("debug", "Debug logging")
                .help("Start the server with --debug.")
                .default_value("false"),
        );
        Ok(FormSchema {
            fields,
            profiles: vec![],
        })
    }

    fn validate(
        &self,
        _host: &dyn Host,
        _user: &User,
        options: Options,
    ) -> Result<Options, Vec<FieldError>> {
        match options.text("interface") {
            Some(i) if self.config.interfaces.iter().any(|c| c == i) => Ok(options),
            Some(i) => Err(vec![field_error(
                "interface",
                format!("{i:?} is not offered on this host"),
            )]),
            None => Ok(options),
        }
    }

    fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError> {
        let options = Options::from(job.options.clone());
        let (program, args) = job
            .cmd
            .split_first()
            .ok_or_else(|| PluginError::Other("the server command is empty".into()))?;
        let mut args = args.to_vec();
        // jupyterhub-singleuser opens JUPYTERHUB_DEFAULT_URL.
        let env = INTERFACES
            .iter()
            .find(|(id, _, _)| Some(*id) == options.text("interface"))
            .map(|(_, _, url)| EnvVar {
                name: "JUPYTERHUB_DEFAULT_URL".into(),
                value: url.to_string(),
            })
            .into_iter()
            .collect();
        if options.boolean("debug") == Some(true) {
            args.push("--debug".into());
        }
        args.extend(self.config.extra_args.iter().cloned());
        let workdir = match self.config.workdir.as_str() {
            "home" => job.home.clone(),
            dir => Some(dir.to_string()),
        };
        let handle = host.start_detached(&Launch {
            program: program.clone(),
            args,
            env,
            spawn_env: true,
            workdir,
        })?;
        host.log(
            Level::Info,
            &format!("started {program} for {} as {handle}", job.user.name),
        );
        Ok(Submitted {
            job_id: handle,
            state: String::new(),
        })
    }

    fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
        let handles: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
        host.detached_status(&handles)
            .into_iter()
            .map(|s| match s {
                ProcessState::Running => {
                    JobState::Running(RunningInfo::on(Some("127.0.0.1".into())))
                }
                ProcessState::Exited(code) => JobState::Done(DoneInfo {
                    exit_code: code,
                    reason: match code {
                        Some(0) => "the server exited".into(),
                        Some(c) => format!("the server exited with status {c}"),
                        None => "the server process is gone".into(),
                    },
                }),
                ProcessState::Unknown(why) => JobState::Unknown(why),
            })
            .collect()
    }

    fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError> {
        match host
            .detached_status(std::slice::from_ref(&job.job_id))
            .first()
        {
            Some(ProcessState::Running) => {
                host.signal_detached(&job.job_id, Signal::Terminate)?;
                Ok(())
            }
            // Already gone: cancelling is done.
            Some(ProcessState::Exited(_)) => Ok(()),
            Some(ProcessState::Unknown(why)) => Err(PluginError::Capability(why.clone())),
            None => Err(PluginError::Other("no status for the job".into())),
        }
    }
}

wasmspawner_sdk::export_plugin!(Local);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmspawner_sdk::testing::{job_spec, ok, user, FakeHost};
    use wasmspawner_sdk::{FieldKind, Value};

    fn plugin() -> Local {
        ok(wasmspawner_sdk::load::<Local>("{}"))
    }

    #[test]
    fn form_offers_configured_interfaces() {
        let p = ok(wasmspawner_sdk::load::<Local>(
            r#"{"interfaces":["notebook"]}"#,
        ));
        let form = ok(p.form(&FakeHost::new(), &user("alice")));
        let FieldKind::Choice(choices) = &form.fields[0].kind else {
            panic!("interface is a choice")
        };
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0].value, "notebook");
        assert_eq!(form.fields[0].default.as_deref(), Some("notebook"));
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = wasmspawner_sdk::load::<Local>(r#"{"interfaces":["emacs"]}"#)
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::Config(m) if m.starts_with("interfaces:")));
        let err = wasmspawner_sdk::load::<Local>(r#"{"workdri":"/tmp"}"#)
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::Config(m) if m.contains("workdri")));
    }

    #[test]
    fn submit_starts_the_command_with_the_spawn_env_in_home() {
        let host = FakeHost::new();
        let job = job_spec(
            "alice",
            vec![
                FieldValue {
                    field: "interface".into(),
                    value: Value::Text("lab".into()),
                },
                FieldValue {
                    field: "debug".into(),
                    value: Value::Boolean(true),
                },
            ],
        );
        let sub = ok(plugin().submit(&host, &job));
        let launches = host.launches();
        assert_eq!(launches[0].0, sub.job_id);
        let l = &launches[0].1;
        assert_eq!(l.program, "jupyterhub-singleuser");
        assert_eq!(l.args, vec!["--debug"]);
        assert_eq!(l.env[0].name, "JUPYTERHUB_DEFAULT_URL");
        assert_eq!(l.env[0].value, "/lab");
        assert!(l.spawn_env);
        assert_eq!(l.workdir.as_deref(), Some("/home/alice"));
    }

    #[test]
    fn status_maps_process_states_in_order() {
        let host = FakeHost::new();
        let p = plugin();
        let a = ok(p.submit(&host, &job_spec("alice", vec![]))).job_id;
        let b = ok(p.submit(&host, &job_spec("bob", vec![]))).job_id;
        host.set_process_state(&b, ProcessState::Exited(Some(3)));
        let jobs: Vec<Job> = [&a, &b, &"nope".to_string()]
            .iter()
            .map(|id| Job {
                job_id: id.to_string(),
                user: "alice".into(),
                state: String::new(),
            })
            .collect();
        let states = p.status(&host, &jobs);
        assert!(matches!(states[0], JobState::Running(_)));
        assert!(matches!(&states[1], JobState::Done(d) if d.exit_code == Some(3)));
        assert!(matches!(states[2], JobState::Unknown(_)));
    }

    #[test]
    fn cancel_terminates_running_and_accepts_gone() {
        let host = FakeHost::new();
        let p = plugin();
        let id = ok(p.submit(&host, &job_spec("alice", vec![]))).job_id;
        let job = Job {
            job_id: id.clone(),
            user: "alice".into(),
            state: String::new(),
        };
        ok(p.cancel(&host, &job));
        assert_eq!(host.signals(), vec![(id.clone(), Signal::Terminate)]);
        host.set_process_state(&id, ProcessState::Exited(None));
        ok(p.cancel(&host, &job));
        assert_eq!(host.signals().len(), 1);
    }
}
