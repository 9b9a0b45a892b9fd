//! Example University's Jupyter on Slurm: the site's policy as code, on top
//! of the `slurm` plugin's scheduler logic (the batch script, `sbatch`, one
//! `squeue` for all jobs, `scancel`), which it reuses unchanged.
//!
//! What batchspawner sites write as Python in `jupyterhub_config.py` (or a
//! fork), this plugin holds, sandboxed and testable:
//! - presets: *quick* and *standard* for everyone, *gpu* only for members of
//!   `gpu-users` (profiles the host enforces: fixed values and bounds);
//! - the project to charge is one of the user's `proj-*` groups, a choice
//!   built per user; a user with no project gets a message saying whom to ask;
//! - at most 8 GiB of memory per core.
//!
//! The generic Slurm knobs (partitions, limits, template, prologue) stay in
//! the instance's config, exactly as for the `slurm` plugin.

use wasmspawner_plugin_slurm::SLURM;
use wasmspawner_sdk::batch::{Batch, FormEntry};
use wasmspawner_sdk::prelude::*;
use wasmspawner_sdk::{Bound, Profile};

/// Groups that name a project the user may charge: `proj-astro` → `astro`.
pub const PROJECT_PREFIX: &str = "proj-";
/// Members may use the GPU preset.
pub const GPU_GROUP: &str = "gpu-users";
/// Memory a job may ask for per core.
pub const MAX_GIB_PER_CORE: i64 = 8;
/// Where users without a project are sent.
pub const SUPPORT: &str = "hpc-support@example.edu";

pub struct Site(Batch);

/// The site overrides only what it changes: the form table (the account is
/// one of the user's projects), the form's profiles, a site rule, and
/// status comes from the `slurm` plugin. Submit and cancel are the
/// defaults.
impl wasmspawner_sdk::batch::BatchPlugin for Site {
    fn batch(&self) -> &Batch {
        &self.0
    }

    fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
        wasmspawner_plugin_slurm::status(&self.0, host, jobs)
    }

    // After a host crash during submit: the jobs named with these spawns.
    fn find_jobs(
        &self,
        host: &dyn Host,
        spawns: &[wasmspawner_sdk::SpawnRef],
    ) -> Result<Vec<wasmspawner_sdk::FoundJob>, PluginError> {
        use wasmspawner_sdk::batch::find;
        find::answer(wasmspawner_plugin_slurm::find_jobs(
            &self.0,
            host,
            &find::spawns(spawns),
        ))
    }

    fn form_table(&self, user: &User) -> Vec<FormEntry> {
        let mut table = self.0.form_table();
        // The account is one of the user's projects, not a free text box.
        table.retain(|e| *e != FormEntry::Account);
        let projects = projects(user);
        if let Some(first) = projects.first() {
            table.push(FormEntry::Custom(
                choice_field(
                    "account",
                    "Project",
                    projects.iter().map(|p| (p.as_str(), p.as_str())),
                )
                .default_value(first.clone())
                .required()
                .help("The project charged for the session."),
            ));
        }
        table
    }

    fn form(&self, _host: &dyn Host, user: &User) -> Result<FormSchema, PluginError> {
        let mut form = self.0.form_from(&self.form_table(user), user);
        form.profiles = profiles(user);
        Ok(form)
    }

    fn validate(
        &self,
        _host: &dyn Host,
        user: &User,
        options: Options,
    ) -> Result<Options, Vec<FieldError>> {
        let mut errors = self.0.validate(user, &options).err().unwrap_or_default();
        errors.extend(site_rules(user, &options));
        if errors.is_empty() {
            Ok(options)
        } else {
            Err(errors)
        }
    }
}

fn descriptor() -> Descriptor {
    let mut d = wasmspawner_sdk::batch::descriptor(
        &SLURM,
        env!("CARGO_PKG_VERSION"),
        "Example University: Jupyter on Slurm with the site's presets and project accounts.",
    );
    d.name = "example-site".into();
    d
}

wasmspawner_sdk::plugin_via_batch!(
    Site,
    describe: descriptor,
    new: |config| Batch::new(&SLURM, config).map(Site)
);

wasmspawner_sdk::export_plugin!(Site);

/// The projects `user` may charge, in the order of their groups.
pub fn projects(user: &User) -> Vec<String> {
    user.groups
        .iter()
        .filter_map(|g| g.strip_prefix(PROJECT_PREFIX))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The presets `user` may choose; the first is the default.
pub fn profiles(user: &User) -> Vec<Profile> {
    let int = |field: &str, v: i64| FieldValue {
        field: field.into(),
        value: Value::Integer(v),
    };
    let text = |field: &str, v: &str| FieldValue {
        field: field.into(),
        value: Value::Text(v.into()),
    };
    let at_most = |field: &str, max: f64| Bound {
        field: field.into(),
        min: None,
        max: Some(max),
        choices: vec![],
    };
    let mut out = vec![
        Profile {
            id: "quick".into(),
            label: "Quick look".into(),
            description: "1 core, 2 GiB, 1 hour on the debug partition; starts in seconds.".into(),
            fixed: vec![
                text("partition", "debug"),
                int("nprocs", 1),
                int("memory", 2),
                int("runtime", 60),
                int("ngpus", 0),
            ],
            bounds: vec![],
        },
        Profile {
            id: "standard".into(),
            label: "Standard".into(),
            description: "Up to 8 cores, 32 GiB and 8 hours.".into(),
            fixed: vec![text("partition", "standard"), int("ngpus", 0)],
            bounds: vec![
                at_most("nprocs", 8.0),
                at_most("memory", 32.0),
                at_most("runtime", 480.0),
            ],
        },
    ];
    if user.groups.iter().any(|g| g == GPU_GROUP) {
        out.push(Profile {
            id: "gpu".into(),
            label: "GPU".into(),
            description: "1 or 2 GPUs, up to 16 cores, 128 GiB and 4 hours.".into(),
            fixed: vec![text("partition", "gpu")],
            bounds: vec![
                Bound {
                    field: "ngpus".into(),
                    min: Some(1.0),
                    max: Some(2.0),
                    choices: vec![],
                },
                at_most("nprocs", 16.0),
                at_most("memory", 128.0),
                at_most("runtime", 240.0),
            ],
        });
    }
    out
}

/// Rules no single field or preset can say.
pub fn site_rules(user: &User, options: &Options) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if projects(user).is_empty() {
        errors.push(FieldError {
            field: String::new(),
            message: format!(
                "You are in no project (a {PROJECT_PREFIX}* group), so no session can be charged; ask {SUPPORT} to add you to your group's project."
            ),
        });
    }
    if let (Some(cores), Some(gib)) = (options.integer("nprocs"), options.integer("memory")) {
        if gib > cores * MAX_GIB_PER_CORE {
            errors.push(FieldError {
                field: "memory".into(),
                message: format!(
                    "{gib} GiB for {cores} core(s) is more than {MAX_GIB_PER_CORE} GiB per core; ask for at most {} GiB or more cores.",
                    cores * MAX_GIB_PER_CORE
                ),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests;
