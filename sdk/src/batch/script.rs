//! The template context, the batch script and the submit command.

use crate::host::Host;
use crate::options::Options;
use crate::template::{self, Context};
use crate::{Command, JobSpec, PluginError, Submitted};

use super::{excerpt, find, formats, Batch};

impl Batch {
    /// The template context: batchspawner's names, in this scheduler's formats.
    pub fn context(&self, job: &JobSpec) -> Context {
        let mut ctx = Context::new();
        for (k, v) in &self.config.vars {
            ctx.insert(k.clone(), v.clone().into());
        }
        ctx.extend(template::job_context(job));
        let o = Options::from(job.options.clone());
        // Every batchspawner name is defined (empty when not chosen), so a
        // site's batchspawner template renders.
        for name in [
            "partition",
            "queue",
            "nprocs",
            "memory",
            "runtime",
            "ngpus",
            "account",
            "nodes",
            "options",
        ] {
            ctx.entry(name.into()).or_insert_with(|| "".into());
        }
        if let Some(q) = o.text(self.sched.queue_field).filter(|q| !q.is_empty()) {
            ctx.insert("partition".into(), q.into());
            ctx.insert("queue".into(), q.into());
        }
        if let Some(gib) = o.integer("memory").filter(|g| *g > 0) {
            let mib = gib as u64 * 1024;
            ctx.insert("memory".into(), (self.sched.memory)(mib).into());
            ctx.insert("memory_mib".into(), mib.into());
            ctx.insert("memory_gib".into(), gib.into());
        }
        if let Some(min) = o.integer("runtime").filter(|m| *m > 0) {
            let min = min as u64;
            ctx.insert("runtime".into(), (self.sched.runtime)(min).into());
            ctx.insert("runtime_minutes".into(), min.into());
            ctx.insert("runtime_hms".into(), formats::hms(min).into());
        }
        for id in ["nprocs", "ngpus", "nodes"] {
            match o.integer(id) {
                Some(n) if n > 0 => ctx.insert(id.into(), n.to_string().into()),
                _ => ctx.insert(id.into(), "".into()),
            };
        }
        let opts = o
            .text("options")
            .map(|t| self.extra_options(t).unwrap_or_default().join(" "))
            .unwrap_or_default();
        ctx.insert("options".into(), opts.into());
        ctx.insert("prologue".into(), self.config.prologue.clone().into());
        ctx.insert("epilogue".into(), self.config.epilogue.clone().into());
        // The job is tagged with its spawn: `jupyterhub-sp-…` (the site's
        // job_name, then the spawn id), so the jobs of a spawn can be found
        // again by name (`find`), e.g. after the host died while submitting.
        let base = self.job_name_base();
        ctx.insert(
            "job_name".into(),
            find::job_name(base, &job.spawn_id).into(),
        );
        ctx.insert("job_name_base".into(), base.to_string().into());
        ctx.insert("spawn_id".into(), job.spawn_id.clone().into());
        ctx
    }

    /// The site's job name (`job_name`, default `jupyterhub`), before the
    /// spawn tag.
    pub fn job_name_base(&self) -> &str {
        self.config.job_name.as_deref().unwrap_or("jupyterhub")
    }

    /// The batch script for `job`.
    pub fn script(&self, job: &JobSpec) -> Result<String, PluginError> {
        let (name, source) = match &self.config.template {
            Some(t) => ("site template", t.as_str()),
            None => ("default template", self.sched.template),
        };
        template::render(name, source, &self.context(job))
    }

    /// The submit command (script on stdin, the spawn's environment).
    pub fn submit_command(&self, job: &JobSpec) -> Result<Command, PluginError> {
        let options = Options::from(job.options.clone());
        self.validate(&job.user, &options).map_err(|errs| {
            PluginError::Other(
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let extra = match options.text("options") {
            Some(t) => self
                .extra_options(t)
                .map_err(|e| PluginError::Other(e.message))?,
            None => vec![],
        };
        Ok(Command::new(self.sched.submit)
            .args(self.sched.submit_fixed.iter().copied())
            .args(self.config.extra_args.iter().cloned())
            .args(self.config.submit_args.iter().cloned())
            .args(extra)
            .stdin(self.script(job)?.into_bytes())
            .with_spawn_env()
            .timeout_ms(self.config.timeout_ms))
    }

    /// Renders, submits, parses the job id.
    pub fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError> {
        let cmd = self.submit_command(job)?;
        let out = crate::host::run_checked(host, &cmd)?;
        let stdout = out.stdout_str();
        let id = crate::parse::job_id(&stdout).ok_or_else(|| {
            PluginError::Scheduler(format!(
                "`{}` printed no job id: {}",
                self.sched.submit,
                excerpt(&stdout, &out.stderr_str())
            ))
        })?;
        host.log(
            crate::Level::Info,
            &format!(
                "submitted {} job {id} for {}",
                self.sched.name, job.user.name
            ),
        );
        Ok(Submitted {
            job_id: id,
            state: String::new(),
        })
    }
}
