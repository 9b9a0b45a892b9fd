//! `wasmspawner check`: load every plugin instance and compare what each
//! declares with what the operator granted.
//!
//! Problems (exit 1): a component that does not load, a site config the
//! plugin rejects, a declared capability with no grant ("missing"), a granted
//! program that cannot be found. Warnings: a grant the plugin never declared
//! ("unused": harmless, since only the intersection is effective).
//!
//! Instances with a submit host or a tunnel are connected to (see
//! [`super::check_connect`]): a wrong host key, a refused login, a dead port
//! or a program missing on the login node is a problem here, not at the
//! first spawn. The check never uses or closes a running host's shared
//! connections.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::capability::review::review;
use crate::config::Config;
use crate::model::User;
use crate::runtime::plugin::PluginInstance;
use crate::runtime::Runtime;

#[derive(Serialize, Default)]
pub struct InstanceReport {
    pub instance: String,
    pub plugin: String,
    pub digest: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub api_version: Option<String>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// Remote instances: where each program resolves and as whom it runs.
    pub remote: Vec<String>,
}

/// When `check` connects over SSH.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// `--no-connect`.
    Never,
    /// The default: instances with a submit host or a tunnel.
    Remote,
    /// `--connect`: also instances with only `grants.ssh` hosts.
    Always,
}

pub async fn run(
    config_path: &Path,
    json: bool,
    connect: Connect,
    connect_as: Option<&str>,
) -> Result<i32> {
    let config = Config::load(config_path)?;
    let runtime = Runtime::for_config(&config)?;
    let mut reports = Vec::new();
    for ic in config.instances.values() {
        let mut r = check_instance(&runtime, &config, ic).await;
        let wanted = match connect {
            Connect::Never => false,
            Connect::Remote => super::check_connect::connects_by_default(ic),
            Connect::Always => ic.ssh.is_some(),
        };
        if wanted {
            let (ic, user) = (ic.clone(), connect_as.map(str::to_string));
            let found = tokio::task::spawn_blocking(move || {
                super::check_connect::check(&ic, user.as_deref())
            })
            .await?;
            r.remote = found.resolved;
            r.problems.extend(found.problems);
            r.warnings.extend(found.warnings);
        } else if super::check_connect::connects_by_default(ic) {
            r.warnings.push(format!(
                "instances.{}: not connected (--no-connect): the host key, the login and the programs on the remote side are unchecked",
                ic.name
            ));
        }
        reports.push(r);
    }
    let failed = reports.iter().any(|r| !r.problems.is_empty());
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!(
                "{} {}  ({} {}, {})",
                if r.problems.is_empty() {
                    "ok  "
                } else {
                    "FAIL"
                },
                r.instance,
                r.name.as_deref().unwrap_or("?"),
                r.version.as_deref().unwrap_or("?"),
                r.plugin
            );
            for l in &r.remote {
                println!("     remote:  {l}");
            }
            for p in &r.problems {
                println!("     problem: {p}");
            }
            for w in &r.warnings {
                println!("     warning: {w}");
            }
        }
        if reports.is_empty() {
            println!("{}: no [instances.*] defined", config.path.display());
        }
    }
    Ok(if failed || reports.is_empty() { 1 } else { 0 })
}

async fn check_instance(
    runtime: &std::sync::Arc<Runtime>,
    config: &Config,
    ic: &crate::config::InstanceConfig,
) -> InstanceReport {
    let mut r = InstanceReport {
        instance: ic.name.clone(),
        plugin: ic.plugin.display().to_string(),
        ..Default::default()
    };
    let inst = match PluginInstance::load(runtime.clone(), &config.path, ic.clone()).await {
        Ok(i) => i,
        Err(e) => {
            r.problems.push(format!("{e:#}"));
            return r;
        }
    };
    let loaded = inst.current();
    let d = &loaded.descriptor;
    r.digest = Some(loaded.digest.clone());
    r.name = Some(d.name.clone());
    r.version = Some(d.version.clone());
    r.api_version = Some(d.api_version.clone());
    let section = format!("[instances.{}]", ic.name);
    let review = review(&loaded.gate, &section);
    r.problems
        .extend(review.missing.into_iter().map(|m| format!("missing: {m}")));
    r.problems.extend(review.unresolved);
    r.warnings
        .extend(review.unused.into_iter().map(|m| format!("unused: {m}")));
    // The plugin checks its site config when asked for a form.
    let probe = User {
        name: "check".into(),
        groups: vec![],
        admin: false,
    };
    if let Err(e) = inst.form(&probe).await {
        r.problems.push(format!("{section} config: {e}"));
    }
    r
}
