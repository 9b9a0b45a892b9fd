//! [`BatchPlugin`]: a batch plugin as a trait with default methods, so a
//! site plugin built on a scheduler overrides only what it changes (its
//! form table, a site rule, its status) and [`plugin_via_batch!`] makes it
//! a [`crate::Plugin`].
//!
//! ```ignore
//! struct Site(Batch);
//! impl BatchPlugin for Site {
//!     fn batch(&self) -> &Batch { &self.0 }
//!     fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
//!         wasmspawner_plugin_slurm::status(&self.0, host, jobs)
//!     }
//!     fn form_table(&self, user: &User) -> Vec<FormEntry> {
//!         let mut t = self.batch().form_table();
//!         t.retain(|e| *e != FormEntry::Account);
//!         t
//!     }
//! }
//! wasmspawner_sdk::plugin_via_batch!(Site, describe: my_descriptor, new: |c| Batch::new(&SLURM, c).map(Site));
//! ```

use super::{Batch, FormEntry};
use crate::{
    FieldError, FormSchema, FoundJob, Host, Job, JobSpec, JobState, Options, PluginError, SpawnRef,
    Submitted, User,
};

/// A batch plugin: [`BatchPlugin::batch`] and [`BatchPlugin::status`] are
/// its own; every other method has the shared behaviour as its default.
pub trait BatchPlugin {
    /// The shared logic with the site config.
    fn batch(&self) -> &Batch;

    /// The state of every job, in order (the scheduler's parser).
    fn status(&self, host: &dyn Host, jobs: &[Job]) -> Vec<JobState>;

    /// The form's entries for `user` (default: [`Batch::form_table`]).
    fn form_table(&self, _user: &User) -> Vec<FormEntry> {
        self.batch().form_table()
    }

    /// The options form (default: the table, rendered, no profiles).
    fn form(&self, _host: &dyn Host, user: &User) -> Result<FormSchema, PluginError> {
        Ok(self.batch().form_from(&self.form_table(user), user))
    }

    /// Site rules (default: the shared ones, [`Batch::validate`]).
    fn validate(
        &self,
        _host: &dyn Host,
        user: &User,
        options: Options,
    ) -> Result<Options, Vec<FieldError>> {
        self.batch().validate(user, &options).map(|()| options)
    }

    /// Renders, submits, parses the job id (default: [`Batch::submit`]).
    fn submit(&self, host: &dyn Host, job: &JobSpec) -> Result<Submitted, PluginError> {
        self.batch().submit(host, job)
    }

    /// Cancels (default: [`Batch::cancel`]).
    fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError> {
        self.batch().cancel(host, job)
    }

    /// The jobs tagged with these spawns (API 0.2 `find-jobs`; default:
    /// unsupported). The bundled schedulers answer with
    /// [`super::find::find_jobs`] through [`crate::batch_plugin!`]'s `find:`.
    fn find_jobs(
        &self,
        _host: &dyn Host,
        _spawns: &[SpawnRef],
    ) -> Result<Vec<FoundJob>, PluginError> {
        Err(PluginError::Unsupported(
            "this batch plugin does not look jobs up by spawn".into(),
        ))
    }
}

/// Implements [`crate::Plugin`] for a [`BatchPlugin`] type: `describe` and
/// `new` as given (closures or functions), everything else from the trait.
#[macro_export]
macro_rules! plugin_via_batch {
    ($ty:ty, describe: $describe:expr, new: $new:expr) => {
        impl $crate::Plugin for $ty {
            type Config = $crate::batch::BatchConfig;
            fn describe() -> $crate::Descriptor {
                ($describe)()
            }
            fn new(config: Self::Config) -> Result<Self, $crate::PluginError> {
                ($new)(config)
            }
            fn form(
                &self,
                host: &dyn $crate::Host,
                user: &$crate::User,
            ) -> Result<$crate::FormSchema, $crate::PluginError> {
                <$ty as $crate::batch::BatchPlugin>::form(self, host, user)
            }
            fn validate(
                &self,
                host: &dyn $crate::Host,
                user: &$crate::User,
                options: $crate::Options,
            ) -> Result<$crate::Options, Vec<$crate::FieldError>> {
                <$ty as $crate::batch::BatchPlugin>::validate(self, host, user, options)
            }
            fn submit(
                &self,
                host: &dyn $crate::Host,
                job: &$crate::JobSpec,
            ) -> Result<$crate::Submitted, $crate::PluginError> {
                <$ty as $crate::batch::BatchPlugin>::submit(self, host, job)
            }
            fn status(
                &self,
                host: &dyn $crate::Host,
                jobs: &[$crate::Job],
            ) -> Vec<$crate::JobState> {
                <$ty as $crate::batch::BatchPlugin>::status(self, host, jobs)
            }
            fn cancel(
                &self,
                host: &dyn $crate::Host,
                job: &$crate::Job,
            ) -> Result<(), $crate::PluginError> {
                <$ty as $crate::batch::BatchPlugin>::cancel(self, host, job)
            }
            fn find_jobs(
                &self,
                host: &dyn $crate::Host,
                spawns: &[$crate::SpawnRef],
            ) -> Result<Vec<$crate::FoundJob>, $crate::PluginError> {
                <$ty as $crate::batch::BatchPlugin>::find_jobs(self, host, spawns)
            }
        }
    };
}
