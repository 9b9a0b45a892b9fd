//! A test plugin. Its site config picks what every export (but `describe`)
//! does, so one component can play a well-behaved plugin, a slow one, and
//! the hostile ones the host must contain:
//!
//! | `behavior` | what the export does |
//! |---|---|
//! | `ok` | answers normally (status: every job running) |
//! | `sleep` | runs `sleep <seconds>` through the host first |
//! | `spin` | loops forever |
//! | `alloc` | allocates until something stops it |
//! | `trap` | panics |
//! | `run` | runs `argv` (config, with `stdin`) through the host; submit returns stdout as the state |
//! | `ssh` | the same on `host` over SSH (declared: `echo **`, `env`, `cat`) |
//! | `detached` | submit starts `argv` as a detached process (not declared: must be denied) |
//! | `read-host` | tries to read host files and environment; returns what it saw |
//! | `big` | returns 8 MiB of text as the job state |
//! | `all-imports` | calls every capability import once |
//! | `inject` | submit runs `echo hello <option raw>` (a user value into argv) |
//! | `short-status` | returns no states at all |
//! | `bad-status` | status says "done" only for job "finished", else pending |
//! | `big-error` | submit fails with an 8 MiB error (newlines, bidi overrides) |
//! | `big-options` | validate returns a 32 MiB option (`note`) |
//! | `cancel-fails` | cancel always fails (status: every job running) |
//! | `changing-reason` | status: pending, with a reason that differs every call |
//! | `bad-host` | status: running on the host in option `raw` (else config `host`) |
//! | `find-jobs` | find-jobs: a job `job-<id>` for every spawn whose id starts with `has-`, plus one for a spawn not asked about and, for a spawn `bad-id`, an empty job id; status: running with a time limit, queue facts and details (API 0.2) |
//! | (any other) | find-jobs: the SDK's default, unsupported |
//!
//! | `flood-audit` | 10 denied runs of a program named with a newline and 120 arguments of 1 MiB each, then 2 000 log lines with newlines |
//! | `run-many` | runs `sleep 0` up to 10 000 times; returns how many ran |
//! | `form-run` | `form` runs `argv` (the result is the error: `ran: …` or the denial) |
//! | `bad-profile` | `form` has profiles whose fixed values break the field rules |
//! | `big-pattern` | `form` has 256 fields with a 20 000-term alternation each |
//!
//! Whatever the behaviour, `status` first sleeps N seconds (through the
//! host's `sleep`) for a job whose id is `sleep:N`.
//!
//! Declared programs: `sleep *`, `env`, `echo **`, `head -c * /dev/zero`,
//! `cat **`, `id` — a fixed set; the host's grants in each test decide what
//! is effective.

use serde::Deserialize;
use wasmspawner_sdk::prelude::*;
use wasmspawner_sdk::Profile;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "ok")]
    pub behavior: String,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub spawn_env: bool,
    #[serde(default = "one")]
    pub seconds: String,
    /// stdin for `run` and `ssh`.
    #[serde(default)]
    pub stdin: String,
    /// The host for `ssh`.
    #[serde(default)]
    pub host: String,
}

fn ok() -> String {
    "ok".into()
}

fn one() -> String {
    "1".into()
}

pub struct Probe {
    c: Config,
}

fn uses(program: &str, args: &[&str], spawn_env: bool) -> ProgramUse {
    ProgramUse {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        spawn_env,
    }
}

impl Probe {
    fn act(&self, host: &dyn Host) -> Result<String, PluginError> {
        match self.c.behavior.as_str() {
            "ok" | "short-status" | "bad-status" | "inject" => Ok(String::new()),
            // Hostile in one export only (see there).
            "big-error" | "big-options" | "cancel-fails" | "changing-reason" | "bad-host"
            | "find-jobs" => Ok(String::new()),
            "sleep" => {
                let out = host.run(&Command::new("sleep").arg(self.c.seconds.clone()))?;
                Ok(out.stdout_str())
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            }
            "trap" => panic!("probe plugin panics on purpose"),
            "flood-audit" => {
                let big = "x".repeat(1 << 20);
                let args: Vec<String> = (0..120).map(|_| big.clone()).collect();
                let mut denied = 0;
                for _ in 0..10 {
                    let c = Command::new("nope\n2026-12-01T00:00:00Z ERROR forged line")
                        .args(args.iter().cloned());
                    if host.run(&c).is_err() {
                        denied += 1;
                    }
                }
                for i in 0..2000 {
                    host.log(
                        Level::Error,
                        &format!("line {i}\n2026-12-01T00:00:00Z ERROR forged\u{2028}x"),
                    );
                }
                Ok(format!("denied={denied}"))
            }
            "run-many" => {
                let mut ran = 0;
                for _ in 0..10_000 {
                    if host.run(&Command::new("sleep").arg("0")).is_ok() {
                        ran += 1;
                    }
                }
                Ok(format!("ran={ran}"))
            }
            "run" | "ssh" => {
                let (program, args) = self
                    .c
                    .argv
                    .split_first()
                    .ok_or_else(|| PluginError::Config("argv: empty".into()))?;
                let mut cmd = Command::new(program.clone())
                    .args(args.iter().cloned())
                    .stdin(self.c.stdin.as_bytes());
                cmd.spawn_env = self.c.spawn_env;
                let out = if self.c.behavior == "ssh" {
                    host.ssh(&self.c.host, &cmd)?
                } else {
                    host.run(&cmd)?
                };
                Ok(format!(
                    "exit={} truncated={} stdout_len={}\n{}",
                    out.exit_code,
                    out.truncated,
                    out.stdout.len(),
                    if out.stdout.len() > 65536 {
                        String::new()
                    } else {
                        out.stdout_str()
                    }
                ))
            }
            "detached" => {
                let (program, args) = self
                    .c
                    .argv
                    .split_first()
                    .ok_or_else(|| PluginError::Config("argv: empty".into()))?;
                host.start_detached(&Launch {
                    program: program.clone(),
                    args: args.to_vec(),
                    env: vec![],
                    spawn_env: false,
                    workdir: None,
                })
                .map_err(PluginError::from)
            }
            "read-host" => {
                let files = ["/etc/passwd", "/etc/hostname", "/proc/self/environ", "."]
                    .iter()
                    .map(|p| {
                        format!(
                            "{p}: {}",
                            std::fs::read_to_string(p)
                                .map(|_| "READ")
                                .unwrap_or("refused")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<String> = std::env::args().collect();
                Ok(format!("files: {files}; env: {env:?}; args: {args:?}"))
            }
            "big" => Ok("x".repeat(8 << 20)),
            "all-imports" => {
                // Every capability import once; the test checks each was gated.
                let mut seen = Vec::new();
                seen.push(format!("run: {:?}", host.run(&Command::new("id")).err()));
                seen.push(format!(
                    "ssh: {:?}",
                    host.ssh("login1", &Command::new("id")).err()
                ));
                seen.push(format!(
                    "start: {:?}",
                    host.start_detached(&Launch {
                        program: "sleep".into(),
                        args: vec!["1".into()],
                        env: vec![],
                        spawn_env: false,
                        workdir: None
                    })
                    .err()
                ));
                seen.push(format!(
                    "status: {:?}",
                    host.detached_status(&["1.2.3".into()])
                ));
                seen.push(format!(
                    "signal: {:?}",
                    host.signal_detached("1.2.3", Signal::Kill).err()
                ));
                host.log(Level::Warn, "probe log line\nwith a forged second line");
                Ok(seen.join("\n"))
            }
            other => Err(PluginError::Config(format!("behavior: unknown {other:?}"))),
        }
    }
}

impl Plugin for Probe {
    type Config = Config;

    fn describe() -> Descriptor {
        Descriptor {
            name: "probe".into(),
            version: "0.0.1".into(),
            api_version: API_VERSION.into(),
            description: "test plugin".into(),
            capabilities: wasmspawner_sdk::DeclaredCapabilities {
                programs: vec![
                    uses("sleep", &["*"], false),
                    uses("env", &[], true),
                    uses("echo", &["**"], false),
                    uses("head", &["-c", "*", "/dev/zero"], false),
                    uses("cat", &["**"], false),
                    uses("id", &[], false),
                ],
                ssh: vec![
                    uses("echo", &["**"], false),
                    uses("env", &[], true),
                    uses("cat", &[], false),
                ],
                detached: vec![],
            }
            .into(),
        }
    }

    fn new(c: Config) -> Result<Self, PluginError> {
        Ok(Probe { c })
    }

    fn form(&self, host: &dyn Host, _user: &User) -> Result<FormSchema, PluginError> {
        if self.c.behavior == "form-run" {
            let (program, args) = self
                .c
                .argv
                .split_first()
                .ok_or_else(|| PluginError::Config("argv: empty".into()))?;
            return Err(
                match host.run(&Command::new(program.clone()).args(args.iter().cloned())) {
                    Ok(out) => PluginError::Other(format!("ran: {}", out.stdout_str().trim())),
                    Err(e) => PluginError::Capability(wasmspawner_sdk::host::run_error_message(&e)),
                },
            );
        }
        if self.c.behavior == "big-pattern" {
            let alternation = (0..20_000)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()
                .join("|");
            return Ok(FormSchema {
                fields: (0..256)
                    .map(|i| text_field(&format!("f{i}"), "F").pattern(&alternation))
                    .collect(),
                profiles: vec![],
            });
        }
        if self.c.behavior == "bad-profile" {
            let profile = |id: &str, field: &str, value: Value| Profile {
                id: id.into(),
                label: id.into(),
                description: String::new(),
                fixed: vec![FieldValue {
                    field: field.into(),
                    value,
                }],
                bounds: vec![],
            };
            return Ok(FormSchema {
                fields: vec![
                    integer_field("cores", "Cores", Some(1), Some(8)).default_value("1"),
                    text_field("note", "Note").pattern("[a-z ]*"),
                ],
                profiles: vec![
                    profile(&self.c.seconds, "cores", Value::Integer(1_000_000)),
                    profile("sneaky", "note", Value::Text("x\n#SBATCH --uid=0".into())),
                ],
            });
        }
        if !matches!(
            self.c.behavior.as_str(),
            "ok" | "run" | "ssh" | "short-status" | "bad-status"
        ) {
            self.act(host)?;
        }
        Ok(FormSchema {
            fields: vec![
                integer_field("cores", "Cores", Some(1), Some(8)).default_value("1"),
                text_field("note", "Note").pattern("[a-z ]*"),
                text_field("raw", "Raw text").max_length(200),
            ],
            profiles: vec![],
        })
    }

    fn validate(
        &self,
        _host: &dyn Host,
        _user: &User,
        mut options: Options,
    ) -> Result<Options, Vec<FieldError>> {
        if self.c.behavior == "big-options" {
            options.set("note", Value::Text("x".repeat(32 << 20)));
        }
        Ok(options)
    }

    fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError> {
        if self.c.behavior == "bad-host" {
            // The host status will report, kept as the job's state.
            let raw = Options::from(job.options.clone());
            return Ok(Submitted {
                job_id: format!("probe-{}", job.spawn_id),
                state: raw.text("raw").unwrap_or_default().to_string(),
            });
        }
        if self.c.behavior == "big-error" {
            let line = "sbatch: error: forged\n2026-01-01 INFO ok \u{202e}gnp.exe\r\u{1b}[31m ";
            return Err(PluginError::Scheduler(line.repeat((8 << 20) / line.len())));
        }
        if self.c.behavior == "inject" {
            let raw = Options::from(job.options.clone())
                .text("raw")
                .unwrap_or_default()
                .to_string();
            let out = host.run(&Command::new("echo").args(["hello".to_string(), raw]))?;
            return Ok(Submitted {
                job_id: format!("probe-{}", job.spawn_id),
                state: out.stdout_str(),
            });
        }
        let state = self.act(host)?;
        Ok(Submitted {
            job_id: format!("probe-{}", job.spawn_id),
            state,
        })
    }

    fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
        // A job id "sleep:N" makes this call take N seconds (through the host).
        for j in jobs {
            if let Some(secs) = j.job_id.strip_prefix("sleep:") {
                if let Err(e) = host.run(&Command::new("sleep").arg(secs)) {
                    let msg = wasmspawner_sdk::host::run_error_message(&e);
                    return jobs
                        .iter()
                        .map(|_| JobState::Unknown(msg.clone()))
                        .collect();
                }
            }
        }
        if let Err(e) = self.act(host) {
            return jobs
                .iter()
                .map(|_| JobState::Unknown(wasmspawner_sdk::host::error_message(&e)))
                .collect();
        }
        match self.c.behavior.as_str() {
            "short-status" => vec![],
            "changing-reason" => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                jobs.iter()
                    .map(|_| {
                        JobState::Pending(PendingInfo::new(format!("Priority\n\u{202e}(t={t})")))
                    })
                    .collect()
            }
            "bad-host" => jobs
                .iter()
                .map(|j| {
                    JobState::Running(RunningInfo::on(Some(if j.state.is_empty() {
                        self.c.host.clone()
                    } else {
                        j.state.clone()
                    })))
                })
                .collect(),
            "find-jobs" => jobs
                .iter()
                .map(|_| {
                    JobState::Running(RunningInfo {
                        started_at: Some(1_800_000_000),
                        time_limit: TimeLimit {
                            limit_secs: Some(3600),
                            ends_at: Some(1_800_003_600),
                        },
                        details: vec![
                            wasmspawner_sdk::Detail {
                                name: "partition".into(),
                                value: "debug".into(),
                            },
                            wasmspawner_sdk::Detail {
                                name: "Bad Name".into(),
                                value: "dropped".into(),
                            },
                        ],
                        ..RunningInfo::on(Some("127.0.0.1".into()))
                    })
                })
                .collect(),
            "bad-status" => jobs
                .iter()
                .map(|j| {
                    if j.job_id == "finished" {
                        JobState::Done(DoneInfo {
                            exit_code: Some(0),
                            reason: "completed".into(),
                        })
                    } else {
                        JobState::Pending(PendingInfo::new("Resources"))
                    }
                })
                .collect(),
            _ => jobs
                .iter()
                .map(|_| JobState::Running(RunningInfo::on(Some("127.0.0.1".into()))))
                .collect(),
        }
    }

    fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError> {
        if self.c.behavior == "cancel-fails" {
            return Err(PluginError::Scheduler(format!(
                "scancel: error: Kill job error on job id {}: Access/permission denied",
                job.job_id
            )));
        }
        self.act(host).map(|_| ())
    }

    fn find_jobs(
        &self,
        host: &dyn Host,
        spawns: &[SpawnRef],
    ) -> Result<Vec<FoundJob>, PluginError> {
        if self.c.behavior != "find-jobs" {
            return Err(PluginError::Unsupported("probe: find-jobs is off".into()));
        }
        self.act(host)?;
        let mut out: Vec<FoundJob> = spawns
            .iter()
            .filter(|s| s.spawn_id.starts_with("has-"))
            .map(|s| FoundJob {
                spawn_id: s.spawn_id.clone(),
                job_id: format!("job-{}", s.spawn_id),
                state: format!("user={}", s.user),
            })
            .collect();
        out.push(FoundJob {
            spawn_id: "never-asked".into(),
            job_id: "job-x".into(),
            state: String::new(),
        });
        if spawns.iter().any(|s| s.spawn_id == "bad-id") {
            out.push(FoundJob {
                spawn_id: "bad-id".into(),
                job_id: String::new(),
                state: String::new(),
            });
        }
        Ok(out)
    }
}

wasmspawner_sdk::export_plugin!(Probe);
