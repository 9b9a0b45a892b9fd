//! The conformance kit: `wasmspawner conformance PLUGIN.wasm`. Runs a
//! standard suite of scenarios against any plugin component, with
//! scripted fake scheduler programs ([`fake`]) instead of a scheduler, the
//! host's real runtime, gate and checks, and prints one row per scenario.
//!
//! What a plugin must do to pass is what the host relies on: a sane
//! descriptor and form, field errors that name the field, submit through
//! argv with the hub's token kept out of argv, the status of many jobs in
//! one call, `unknown` when the controller is dead, `done` only on positive
//! evidence, no failure on mangled output, an idempotent cancel, and a
//! complete `find-jobs` answer (API 0.2).

pub mod fake;
pub mod profiles;
mod scenarios;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::runtime::plugin::PluginInstance;
use crate::runtime::Runtime;

pub use profiles::Profile;

/// What the kit is asked to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub plugin: PathBuf,
    /// The scheduler profile (`slurm`, `pbs`, …); default: from the
    /// programs the plugin declares.
    pub scheduler: Option<String>,
    /// A TOML file with the instance's site config (what would be
    /// `[instances.X.config]`).
    pub site_config: Option<PathBuf>,
    /// The groups of the test user (default: `users`).
    pub groups: Vec<String>,
    /// Where compiled components are kept between runs (default: the
    /// run's temporary directory).
    pub cache_dir: Option<PathBuf>,
    /// The executable each fake program is a link to (default: this one,
    /// which must be `wasmspawner`'s: a bench or test gives
    /// `CARGO_BIN_EXE_wasmspawner`).
    pub fake_program: Option<PathBuf>,
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// Not applicable to this plugin, said why (never counted as a pass).
    Skip(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plugin: String,
    pub api_version: String,
    pub scheduler: Option<String>,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .count()
    }

    /// The table a plugin author reads.
    pub fn table(&self) -> String {
        let mut out = format!(
            "conformance of {} (API {}, scheduler profile: {})\n",
            self.plugin,
            self.api_version,
            self.scheduler.as_deref().unwrap_or("none")
        );
        let width = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(0);
        for r in &self.rows {
            let (word, detail) = match &r.outcome {
                Outcome::Pass(d) => ("PASS", d),
                Outcome::Fail(d) => ("FAIL", d),
                Outcome::Skip(d) => ("SKIP", d),
            };
            out.push_str(&format!("{word}  {:width$}  {detail}\n", r.scenario));
        }
        let pass = self
            .rows
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Pass(_)))
            .count();
        let skip = self.rows.len() - pass - self.failed();
        out.push_str(&format!(
            "{pass} passed, {} failed, {skip} skipped\n",
            self.failed()
        ));
        out
    }
}

/// The kit's private world: a state dir, the fake `bin/`, the config.
pub struct Bench {
    pub user: crate::model::User,
    /// Kept for the run: removed when the kit ends.
    _dir: tempfile::TempDir,
    /// The fake programs ([`fake::set_script`], [`fake::calls`]).
    pub bin: PathBuf,
    /// The plugin, loaded with each program it declares granted and the
    /// fake `bin/` as its search path.
    pub instance: Arc<PluginInstance>,
    pub profile: Option<&'static Profile>,
}

/// Runs every scenario.
pub async fn run(opts: &Options) -> Result<Report> {
    let bench = match setup(opts).await? {
        Ok(b) => b,
        Err(describe) => {
            return Ok(Report {
                plugin: opts.plugin.display().to_string(),
                api_version: "?".into(),
                scheduler: opts.scheduler.clone(),
                rows: vec![describe],
            })
        }
    };
    let rows = scenarios::all(&bench).await;
    Ok(Report {
        plugin: opts.plugin.display().to_string(),
        api_version: bench.instance.current().api.as_str().into(),
        scheduler: bench.profile.map(|p| p.name.to_string()),
        rows,
    })
}

/// The kit's world for `opts`, without running a scenario: for a bench
/// that drives the plugin against the fake programs itself.
pub async fn prepare(opts: &Options) -> Result<Bench> {
    match setup(opts).await? {
        Ok(b) => Ok(b),
        Err(Row {
            outcome: Outcome::Fail(why),
            ..
        }) => anyhow::bail!("describe failed: {why}"),
        Err(row) => anyhow::bail!("describe: {:?}", row.outcome),
    }
}

/// The world, or the failed describe row.
async fn setup(opts: &Options) -> Result<std::result::Result<Bench, Row>> {
    let wasm = std::fs::canonicalize(&opts.plugin)
        .with_context(|| format!("cannot read the plugin {}", opts.plugin.display()))?;
    let site = match &opts.site_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the site config {}", p.display()))?;
            let v: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{}: not a TOML table", p.display()))?;
            site_table(p, &wasm, v)?
        }
        None => toml::Table::new(),
    };
    let dir = tempfile::Builder::new()
        .prefix("wasmspawner-conformance.")
        .tempdir()
        .context("cannot make a temporary directory")?;

    // First load with nothing granted: describe says what to grant.
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| dir.path().join("cache"));
    let first = load(dir.path(), &cache, &wasm, &site, &[], "describe").await;
    let first = match first {
        Ok(i) => i,
        Err(e) => {
            return Ok(Err(Row {
                scenario: "describe is sane",
                outcome: Outcome::Fail(format!("{e:#}")),
            }));
        }
    };
    let loaded = first.current();
    let declared = loaded.descriptor.capabilities.clone();
    let profile = match &opts.scheduler {
        Some(name) => Some(profiles::by_name(name).with_context(|| {
            format!(
                "--scheduler {name}: no such profile; the kit knows {}",
                profiles::names().join(", ")
            )
        })?),
        None => profiles::detect(&loaded.descriptor.name, &declared),
    };
    let mut programs: Vec<&str> = declared
        .programs
        .iter()
        .map(|p| p.program.as_str())
        .filter(|p| !p.contains('/') && *p != "*")
        .collect();
    if let Some(p) = profile {
        programs.extend([p.submit, p.status, p.cancel]);
        programs.extend(p.extra_programs);
    }
    programs.sort();
    programs.dedup();
    let bin = fake::make_bin(dir.path(), &programs, opts.fake_program.as_deref())?;
    // Each declared program, granted for what it declares, as the host.
    let grants: Vec<toml::Value> = declared
        .programs
        .iter()
        .filter(|p| !p.program.contains('/') && p.program != "*")
        .map(|p| {
            let mut g = toml::Table::new();
            g.insert("program".into(), p.program.clone().into());
            g.insert(
                "args".into(),
                toml::Value::Array(p.args.iter().cloned().map(toml::Value::from).collect()),
            );
            g.insert("spawn_env".into(), p.spawn_env.into());
            g.insert(
                "phases".into(),
                toml::Value::Array(
                    ["submit", "status", "cancel"]
                        .map(toml::Value::from)
                        .to_vec(),
                ),
            );
            g.insert("run_as".into(), "host".into());
            toml::Value::Table(g)
        })
        .collect();
    let instance = load(dir.path(), &cache, &wasm, &site, &grants, "kit").await?;
    Ok(Ok(Bench {
        user: crate::model::User {
            name: "alice".into(),
            groups: if opts.groups.is_empty() {
                vec!["users".into()]
            } else {
                opts.groups.clone()
            },
            admin: false,
        },
        _dir: dir,
        bin,
        instance,
        profile,
    }))
}

/// The site config in `v`: the file itself, or — for a host config (it has
/// `[instances]`) — the `config` table of its instance for this plugin (the
/// only one, or the one whose `plugin` has the component's file name).
fn site_table(path: &Path, wasm: &Path, mut v: toml::Table) -> Result<toml::Table> {
    let Some(toml::Value::Table(instances)) = v.remove("instances") else {
        return Ok(v);
    };
    let file = wasm.file_name().unwrap_or_default();
    let fits: Vec<(&String, &toml::Value)> = if instances.len() == 1 {
        instances.iter().collect()
    } else {
        instances
            .iter()
            .filter(|(_, i)| {
                i.get("plugin")
                    .and_then(|p| p.as_str())
                    .is_some_and(|p| Path::new(p).file_name() == Some(file))
            })
            .collect()
    };
    match fits.as_slice() {
        [(_, i)] => Ok(match i.get("config") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        }),
        _ => anyhow::bail!(
            "{}: a host config with {} instances, none (or more than one) for {}; give a file with just the site config table",
            path.display(),
            instances.len(),
            file.to_string_lossy()
        ),
    }
}

/// Writes a host config for the plugin (its site config, the grants, the
/// fake `bin/` as its search path) and loads it.
async fn load(
    dir: &Path,
    cache: &Path,
    wasm: &Path,
    site: &toml::Table,
    grants: &[toml::Value],
    name: &str,
) -> Result<Arc<PluginInstance>> {
    let cfg = dir.join(format!("{name}.toml"));
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    let mut instance = toml::Table::new();
    instance.insert("plugin".into(), path(wasm));
    instance.insert(
        "search_path".into(),
        toml::Value::Array(vec![path(&dir.join("bin"))]),
    );
    if !site.is_empty() {
        instance.insert("config".into(), toml::Value::Table(site.clone()));
    }
    if !grants.is_empty() {
        let mut g = toml::Table::new();
        g.insert("programs".into(), toml::Value::Array(grants.to_vec()));
        instance.insert("grants".into(), toml::Value::Table(g));
    }
    let mut instances = toml::Table::new();
    instances.insert("p".into(), toml::Value::Table(instance));
    let mut top = toml::Table::new();
    top.insert("state_dir".into(), path(&dir.join("state")));
    top.insert("cache_dir".into(), path(cache));
    top.insert("instances".into(), toml::Value::Table(instances));
    std::fs::write(&cfg, toml::to_string(&top)?)?;
    let config = crate::config::Config::load(&cfg)?;
    let rt = Runtime::for_config(&config)?;
    let ic = config
        .instance("p")
        .context("the kit's config has its instance")?
        .clone();
    PluginInstance::load(rt, &config.path, ic).await
}
