//! The options form of a batch plugin, and the site rules behind it.

use crate::form::*;
use crate::options::{field_error, Options};
use crate::{Field, FieldError, FormSchema, User};

use super::{is_safe_option_token, is_safe_word, toml_like, Batch, FieldConfig, SAFE_WORD};

/// A number field of the table: its id (also the `[config.<id>]` key),
/// label, unit, and the defaults the site config may override.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub id: &'static str,
    pub label: &'static str,
    /// Shown beside the box (`GiB`, `minutes`); empty for none.
    pub unit: &'static str,
    /// Whether the field appears unless `[config.<id>] enabled` says.
    pub enabled: bool,
    pub min: i64,
    pub max: i64,
    pub default: Option<i64>,
}

/// One entry of a batch plugin's form table, in form order. A site plugin
/// takes [`Batch::form_table`], removes, reorders or adds entries, and
/// renders it with [`Batch::form_from`]; each built-in entry still follows
/// the site config (`enabled`, labels, ranges, choices).
#[derive(Debug, Clone, PartialEq)]
pub enum FormEntry {
    /// The queue or partition (`[config.queue]`).
    Queue,
    /// A number field (`nprocs`, `memory`, `runtime`, `ngpus`, `nodes`).
    Number(FieldSpec),
    /// The account (`[config.account]`, off by default).
    Account,
    /// Free-text extra submit options (`[config.extra_options]`).
    ExtraOptions,
    /// A field of the site's own, shown as built.
    Custom(Field),
}

/// The number fields every batch scheduler offers, with their defaults.
pub fn number_fields() -> Vec<FieldSpec> {
    let s = |id, label, unit, enabled, min, max, default| FieldSpec {
        id,
        label,
        unit,
        enabled,
        min,
        max,
        default: Some(default),
    };
    vec![
        s("nprocs", "CPU cores", "", true, 1, 256, 1),
        s("memory", "Memory", "GiB", true, 1, 4096, 4),
        s("runtime", "Run time", "minutes", true, 10, 10080, 480),
        s("ngpus", "GPUs", "", false, 0, 16, 0),
        s("nodes", "Nodes", "", false, 1, 64, 1),
    ]
}

impl Batch {
    pub(super) fn int_specs(&self) -> Vec<FieldSpec> {
        number_fields()
    }

    /// The form's entries before the site config turns any off: the
    /// queue, the number fields, the account, the extra options.
    pub fn form_table(&self) -> Vec<FormEntry> {
        std::iter::once(FormEntry::Queue)
            .chain(self.int_specs().into_iter().map(FormEntry::Number))
            .chain([FormEntry::Account, FormEntry::ExtraOptions])
            .collect()
    }

    /// The site config of a built-in number field (`None` for a site's own
    /// id).
    pub(super) fn int_config_opt(&self, id: &str) -> Option<&FieldConfig> {
        Some(match id {
            "nprocs" => &self.config.nprocs,
            "memory" => &self.config.memory,
            "runtime" => &self.config.runtime,
            "ngpus" => &self.config.ngpus,
            "nodes" => &self.config.nodes,
            _ => return None,
        })
    }

    pub(super) fn int_config(&self, id: &str) -> &FieldConfig {
        match id {
            "nprocs" => &self.config.nprocs,
            "memory" => &self.config.memory,
            "runtime" => &self.config.runtime,
            "ngpus" => &self.config.ngpus,
            _ => &self.config.nodes,
        }
    }

    fn choices_for<'a>(&self, f: &'a FieldConfig, user: &User) -> Vec<&'a str> {
        f.choices
            .iter()
            .filter(|c| match f.groups.get(*c) {
                None => true,
                Some(gs) => user.groups.iter().any(|g| gs.contains(g)),
            })
            .map(String::as_str)
            .collect()
    }

    fn word_field(&self, id: &str, label: &str, f: &FieldConfig, user: &User) -> Field {
        // A list without a default starts with an empty choice, "the site's
        // default", so what the help says is what the list offers.
        let site_default = f.default.is_none() && f.required != Some(true);
        let field = if f.choices.is_empty() {
            text_field(id, label).pattern(SAFE_WORD).max_length(64)
        } else {
            let cs = self.choices_for(f, user);
            let empty = site_default.then_some(("", "(the site's default)"));
            choice_field(
                id,
                label,
                empty.into_iter().chain(cs.iter().map(|c| (*c, *c))),
            )
        };
        let mut field = field
            .label_opt(f.label.as_deref())
            .help(f.help.as_deref().unwrap_or(""));
        if let Some(d) = &f.default {
            field = field.default_value(d.to_string());
        }
        if f.required == Some(true) {
            field = field.required();
        }
        field
    }

    /// The options form, from the site config: [`Batch::form_table`]
    /// rendered by [`Batch::form_from`].
    pub fn form(&self, user: &User) -> FormSchema {
        self.form_from(&self.form_table(), user)
    }

    /// Renders a form table for `user`: built-in entries the site config
    /// turned off are left out, custom ones are shown as they are.
    pub fn form_from(&self, table: &[FormEntry], user: &User) -> FormSchema {
        let fields = table
            .iter()
            .filter_map(|entry| match entry {
                FormEntry::Queue => self.queue_field(user),
                FormEntry::Number(spec) => self.number_field(spec),
                FormEntry::Account => self.account_field(user),
                FormEntry::ExtraOptions => self.extra_options_field(),
                FormEntry::Custom(f) => Some(f.clone()),
            })
            .collect();
        FormSchema {
            fields,
            profiles: vec![],
        }
    }

    fn queue_field(&self, user: &User) -> Option<Field> {
        let q = &self.config.queue;
        if !q.enabled.unwrap_or(self.sched.queue_enabled) {
            return None;
        }
        let label = if self.sched.queue_field == "partition" {
            "Partition"
        } else {
            "Queue"
        };
        let help = if q.default.is_some() || q.required == Some(true) {
            "Where the job runs."
        } else {
            "Where the job runs; empty for the site's default."
        };
        Some(
            self.word_field(self.sched.queue_field, label, q, user)
                .help_default(help),
        )
    }

    fn number_field(&self, spec: &FieldSpec) -> Option<Field> {
        let f = self.int_config_opt(spec.id);
        let default_cfg = FieldConfig::default();
        let f = f.unwrap_or(&default_cfg);
        if !f.enabled.unwrap_or(spec.enabled) {
            return None;
        }
        let default = match &f.default {
            Some(toml_like::Scalar::Int(i)) => Some(*i),
            _ => spec.default,
        };
        let min = f.min.unwrap_or(spec.min);
        let max = f.max.unwrap_or(spec.max);
        let mut field = integer_field(spec.id, spec.label, Some(min), Some(max))
            .label_opt(f.label.as_deref())
            .help(f.help.as_deref().unwrap_or(""));
        if !spec.unit.is_empty() {
            field = field.unit(spec.unit);
        }
        if let Some(d) = default {
            field = field.default_value(d.clamp(min, max).to_string());
        }
        if f.required.unwrap_or(true) {
            field = field.required();
        }
        Some(field)
    }

    fn account_field(&self, user: &User) -> Option<Field> {
        let a = &self.config.account;
        a.enabled.unwrap_or(false).then(|| {
            self.word_field("account", "Account", a, user)
                .help_default("The account or project charged for the job.")
        })
    }

    fn extra_options_field(&self) -> Option<Field> {
        let x = &self.config.extra_options;
        x.enabled.then(|| {
            text_field("options", x.label.as_deref().unwrap_or("Extra options"))
                .max_length(512)
                .help(x.help.as_deref().unwrap_or(&format!(
                    "Extra submit options; allowed flags: {}",
                    x.allowed_flags.join(" ")
                )))
        })
    }

    /// Site rules: group-restricted choices, safe words, the extra-options
    /// allowlist. Run again at submit (options could come from anywhere).
    pub fn validate(&self, user: &User, options: &Options) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        for (id, f) in [
            (self.sched.queue_field, &self.config.queue),
            ("account", &self.config.account),
        ] {
            let Some(v) = options.text(id).filter(|v| !v.is_empty()) else {
                continue;
            };
            if !is_safe_word(v) {
                errors.push(field_error(id, format!("{v:?} is not a valid name")));
            } else if !f.choices.is_empty() && !self.choices_for(f, user).contains(&v) {
                errors.push(field_error(id, format!("{v:?} is not available to you")));
            }
        }
        for spec in self.int_specs() {
            let f = self.int_config(spec.id);
            if let Some(v) = options.integer(spec.id) {
                let (min, max) = (f.min.unwrap_or(spec.min), f.max.unwrap_or(spec.max));
                if v < min || v > max {
                    errors.push(field_error(
                        spec.id,
                        format!("must be between {min} and {max}"),
                    ));
                }
            }
        }
        if let Some(text) = options.text("options") {
            if let Err(e) = self.extra_options(text) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Splits and checks free-text extra options against the allowlist.
    pub fn extra_options(&self, text: &str) -> Result<Vec<String>, FieldError> {
        let x = &self.config.extra_options;
        if text.trim().is_empty() {
            return Ok(vec![]);
        }
        if !x.enabled {
            return Err(field_error("options", "extra options are not enabled here"));
        }
        let mut out = Vec::new();
        let mut may_take_value = false;
        for tok in text.split_whitespace() {
            if !is_safe_option_token(tok) {
                return Err(field_error(
                    "options",
                    format!("{tok:?}: only letters, digits and _.,:=@+/%- are allowed"),
                ));
            }
            if tok.starts_with('-') {
                let flag = tok.split('=').next().unwrap_or(tok);
                if !x.allowed_flags.iter().any(|a| a == flag) {
                    return Err(field_error(
                        "options",
                        format!(
                            "{flag} is not allowed; allowed: {}",
                            x.allowed_flags.join(" ")
                        ),
                    ));
                }
                may_take_value = !tok.contains('=');
            } else if may_take_value {
                may_take_value = false;
            } else {
                return Err(field_error(
                    "options",
                    format!("{tok:?} is not a flag or a flag's value"),
                ));
            }
            out.push(tok.to_string());
        }
        Ok(out)
    }
}

trait FieldExt {
    fn label_opt(self, label: Option<&str>) -> Self;
    fn help_default(self, help: &str) -> Self;
}

impl FieldExt for crate::Field {
    fn label_opt(mut self, label: Option<&str>) -> Self {
        if let Some(l) = label {
            self.label = l.to_string();
        }
        self
    }
    fn help_default(mut self, help: &str) -> Self {
        if self.help.is_empty() {
            self.help = help.to_string();
        }
        self
    }
}
