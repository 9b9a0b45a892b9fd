//! Batch scripts from minijinja templates (Jinja2 syntax).
//!
//! The context follows batchspawner's variable names (`username`, `homedir`,
//! `cmd`, `keepvars`, …) so a site can bring its batchspawner template.
//! Undefined variables may be tested (`{% if account %}`) but printing one
//! is an error naming it, so a typo does not silently produce an empty flag.
//!
//! Only validated options reach a template. The `shquote` filter quotes a
//! value for a POSIX shell; `cmd` is already quoted that way.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value as J};

use crate::options::value_to_string;
use crate::{JobSpec, PluginError};

/// Template variables, by name.
pub type Context = BTreeMap<String, J>;

/// The batchspawner-compatible variables for `job`:
/// `username`, `homedir`, `spawn_id`, `callback_url`, `cmd` (argv, shell
/// quoted and joined), `cmd_argv` (list), `keepvars` (comma-joined names of
/// the environment variables the job receives), `keepvars_list`, and every
/// option by its field id (as a string; booleans `true`/`false`).
pub fn job_context(job: &JobSpec) -> Context {
    let mut ctx = Context::new();
    for o in &job.options {
        ctx.insert(o.field.clone(), J::from(value_to_string(&o.value)));
    }
    ctx.insert("username".into(), J::from(job.user.name.clone()));
    ctx.insert(
        "homedir".into(),
        J::from(job.home.clone().unwrap_or_default()),
    );
    ctx.insert("spawn_id".into(), J::from(job.spawn_id.clone()));
    ctx.insert("callback_url".into(), J::from(job.callback_url.clone()));
    ctx.insert("cmd".into(), J::from(shell_join(&job.cmd)));
    ctx.insert("cmd_argv".into(), J::from(job.cmd.clone()));
    ctx.insert("keepvars".into(), J::from(job.env_names.join(",")));
    ctx.insert("keepvars_list".into(), J::from(job.env_names.clone()));
    ctx
}

/// Renders `source` with `ctx`. Errors name the template line.
pub fn render(name: &str, source: &str, ctx: &Context) -> Result<String, PluginError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_keep_trailing_newline(true);
    env.add_filter("shquote", |s: String| shell_quote(&s));
    env.add_filter("condor_args", |argv: Vec<String>| condor_arguments(&argv));
    env.add_template(name, source)
        .map_err(|e| PluginError::Config(format!("template {name}: {}", describe(&e))))?;
    let tmpl = env.get_template(name).expect("just added");
    tmpl.render(ctx)
        .map_err(|e| PluginError::Config(format!("template {name}: {}", describe(&e))))
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    if let Some(line) = e.line() {
        if !msg.contains("line") {
            msg.push_str(&format!(" (line {line})"));
        }
    }
    msg
}

/// Quotes `s` so a POSIX shell reads it as one word with no expansion.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r#"'"'"'"#))
    }
}

/// An argv in HTCondor's "new" `arguments` syntax, without the enclosing
/// double quotes: each argument in single quotes, `'` doubled, `"` doubled.
/// Newlines cannot be written in a submit description and are refused.
pub fn condor_arguments<S: AsRef<str>>(argv: &[S]) -> Result<String, minijinja::Error> {
    let mut out = Vec::new();
    for a in argv {
        let a = a.as_ref();
        if a.contains(['\n', '\r']) {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "an argument contains a newline, which HTCondor cannot pass",
            ));
        }
        out.push(format!("'{}'", a.replace('\'', "''").replace('"', "\"\"")));
    }
    Ok(out.join(" "))
}

/// Quotes every element and joins them with spaces.
pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_hostile_values_one_word() {
        assert_eq!(shell_quote("plain-1.0"), "plain-1.0");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(shell_quote("x\ny"), "'x\ny'");
    }

    #[test]
    fn condor_arguments_quote_each_word() {
        assert_eq!(
            condor_arguments(&["a b", "it's", "say \"hi\""]).unwrap(),
            r#"'a b' 'it''s' 'say ""hi""'"#
        );
        assert!(condor_arguments(&["x\ny"]).is_err());
    }

    #[test]
    fn undefined_variable_printed_is_an_error_but_testable() {
        let ctx = Context::new();
        assert_eq!(
            render("t", "{% if account %}-A {{account}}{% endif %}ok", &ctx).unwrap(),
            "ok"
        );
        let err = render("t", "#SBATCH -A {{ acount }}\n", &ctx).unwrap_err();
        assert!(matches!(err, PluginError::Config(m) if m.contains("undefined")));
    }
}
