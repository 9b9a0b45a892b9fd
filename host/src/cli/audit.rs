//! `wasmspawner audit`: for a security reviewer, everything each plugin
//! instance may do — the component and its digest, the pin, the WIT version,
//! what it declares, what the operator grants, the effective intersection,
//! the run-as rule and the limits — as a table or as JSON.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::capability::review::{review, Effective, PhaseView};
use crate::config::{Config, EnvGrant, InstanceConfig, ProgramGrant};
use crate::model::DeclaredCapabilities;
use crate::runtime::plugin::PluginInstance;
use crate::runtime::Runtime;

#[derive(Serialize)]
pub struct InstanceAudit {
    pub instance: String,
    pub component: String,
    pub digest: Option<String>,
    /// `pinned (matches)`, `not pinned`, or the load error for a mismatch.
    pub pin: String,
    pub plugin: Option<String>,
    pub api_version: Option<String>,
    pub declared: Option<DeclaredCapabilities>,
    pub granted: Granted,
    pub effective: Vec<Effective>,
    /// Per export: what it may run and as whom.
    pub by_phase: Vec<PhaseView>,
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    pub run_as: Vec<String>,
    /// Where granted programs run: this host, or a submit host over SSH.
    pub runs_on: String,
    /// A submit host's programs run there as this account (`ssh.user`,
    /// `{user}` the hub user), found by its login PATH (or a grant's
    /// `path`); `None`: they run on this host.
    pub remote_account: Option<String>,
    /// Servers reached through an SSH tunnel via this gateway.
    pub tunnel_via: Option<String>,
    /// Jobs call back through a reverse tunnel: the gateway listens here
    /// (`[BIND:]PORT`) and forwards to this host's HTTP API.
    pub callback_tunnel: Option<String>,
    pub limits: Limits,
    pub load_error: Option<String>,
    /// Hot reloads a running host made that declared more than the version
    /// before (from the audit log's `plugin.reload` records).
    pub widening_reloads: Vec<String>,
}

#[derive(Serialize)]
pub struct Granted {
    pub programs: Vec<ProgramGrant>,
    pub detached: Vec<ProgramGrant>,
    pub ssh: Vec<crate::config::SshGrant>,
    /// `NAME` (passed through from the host) or `NAME=VALUE` (fixed).
    pub env: Vec<String>,
    pub search_path: Vec<String>,
}

#[derive(Serialize)]
pub struct Limits {
    pub memory_mib: usize,
    pub call_timeout_secs: f64,
    pub command_timeout_secs: f64,
    pub output_bytes: usize,
    pub concurrent_calls: usize,
    pub max_runs_per_call: u32,
    pub max_runs_per_minute: u32,
    pub log_lines_per_10s: u32,
}

pub async fn run(config_path: &Path, json: bool) -> Result<i32> {
    let config = Config::load(config_path)?;
    let runtime = Runtime::for_config(&config)?;
    let mut audits = Vec::new();
    for ic in config.instances.values() {
        audits.push(audit_instance(&runtime, &config, ic).await);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&audits)?);
    } else {
        for a in &audits {
            print_table(a);
        }
    }
    Ok(if audits.iter().any(|a| a.load_error.is_some()) {
        1
    } else {
        0
    })
}

async fn audit_instance(
    runtime: &std::sync::Arc<Runtime>,
    config: &Config,
    ic: &InstanceConfig,
) -> InstanceAudit {
    let l = &ic.limits;
    let mut a = InstanceAudit {
        instance: ic.name.clone(),
        component: ic.plugin.display().to_string(),
        digest: None,
        pin: match &ic.sha256 {
            Some(p) => format!("pinned to {p}"),
            None => "not pinned".into(),
        },
        plugin: None,
        api_version: None,
        declared: None,
        granted: Granted {
            programs: ic.grants.programs.clone(),
            detached: ic.grants.detached.clone(),
            ssh: ic.grants.ssh.clone(),
            env: ic
                .grants
                .env
                .iter()
                .map(|e| match e {
                    EnvGrant::Pass(n) => n.clone(),
                    EnvGrant::Fixed(n, v) => format!("{n}={v}"),
                })
                .collect(),
            search_path: ic
                .search_path
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        },
        effective: vec![],
        by_phase: vec![],
        missing: vec![],
        unused: vec![],
        run_as: ic.run_as.clone(),
        runs_on: match (&ic.submit_host, &ic.ssh) {
            (Some(h), Some(s)) => format!(
                "{h} over SSH (port {}, user {}, host keys from {} only)",
                s.port,
                s.user.as_deref().unwrap_or("the host's own"),
                s.known_hosts.display()
            ),
            _ => "this host".into(),
        },
        remote_account: match (&ic.submit_host, &ic.ssh) {
            (Some(h), Some(s)) => Some(format!(
                "{} on {h} (ssh.user), programs found by its login PATH there unless a grant gives `path`; run `wasmspawner check` to see where each resolves",
                match s.user.as_deref() {
                    Some(u) if u.contains("{user}") => format!("`{u}` (the hub user's own account)"),
                    Some(u) => format!("`{u}`"),
                    None => "the account name the host runs as".into(),
                }
            )),
            _ => None,
        },
        tunnel_via: ic.tunnel.as_ref().map(|t| t.via.clone()),
        callback_tunnel: ic
            .tunnel
            .as_ref()
            .and_then(|t| t.callback.as_ref())
            .map(|c| match &c.bind {
                Some(b) => format!("{b}:{}", c.port),
                None => c.port.to_string(),
            }),
        limits: Limits {
            memory_mib: l.memory_bytes >> 20,
            call_timeout_secs: l.call_timeout.as_secs_f64(),
            command_timeout_secs: l.command_timeout.as_secs_f64(),
            output_bytes: l.output_bytes,
            concurrent_calls: l.concurrent_calls,
            max_runs_per_call: l.max_runs_per_call,
            max_runs_per_minute: l.max_runs_per_minute,
            log_lines_per_10s: l.log_lines_per_10s,
        },
        load_error: None,
        widening_reloads: widening_reloads(&config.state_dir.join("audit.jsonl"), &ic.name),
    };
    match PluginInstance::load(runtime.clone(), &config.path, ic.clone()).await {
        Ok(inst) => {
            let loaded = inst.current();
            if ic.sha256.is_some() {
                a.pin = format!("pinned, matches ({})", loaded.digest);
            }
            a.digest = Some(loaded.digest.clone());
            a.plugin = Some(format!(
                "{} {}",
                loaded.descriptor.name, loaded.descriptor.version
            ));
            a.api_version = Some(loaded.descriptor.api_version.clone());
            a.declared = Some(loaded.descriptor.capabilities.clone());
            let r = review(&loaded.gate, &format!("[instances.{}]", ic.name));
            a.effective = r.effective;
            a.by_phase = r.by_phase;
            a.missing = r.missing;
            a.unused = r.unused;
        }
        Err(e) => a.load_error = Some(format!("{e:#}")),
    }
    a
}

/// The `plugin.reload` records of `instance` with a wider declaration, from
/// the last MiB of the audit log.
fn widening_reloads(log: &Path, instance: &str) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return vec![];
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
    let mut text = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut text);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["capability"] == "plugin.reload" && r["instance"] == instance)
        .filter(|r| r["argv"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|r| {
            let more: Vec<&str> = r["argv"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            format!(
                "{} {} declares more: {}",
                r["time"].as_str().unwrap_or("?"),
                &r["digest"].as_str().unwrap_or("?")
                    [..12.min(r["digest"].as_str().unwrap_or("?").len())],
                more.join("; ")
            )
        })
        .collect()
}

fn print_table(a: &InstanceAudit) {
    let or = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!("instance {}", a.instance);
    println!("  component    {}", a.component);
    println!("  sha256       {}", or(&a.digest));
    println!("  pin          {}", a.pin);
    println!(
        "  plugin       {}  (WIT API {})",
        or(&a.plugin),
        or(&a.api_version)
    );
    if let Some(e) = &a.load_error {
        println!("  LOAD ERROR   {e}");
    }
    if let Some(d) = &a.declared {
        let fmt = |v: &[crate::model::ProgramUse]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|u| {
                        format!(
                            "{} [{}]{}",
                            u.program,
                            u.args.join(" "),
                            if u.spawn_env { " +spawn-env" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        println!("  declared     programs: {}", fmt(&d.programs));
        println!("               detached: {}", fmt(&d.detached));
        println!("               ssh: {}", fmt(&d.ssh));
    }
    let fmtg = |v: &[ProgramGrant]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|g| {
                    format!(
                        "{} [{}]{} for {}",
                        g.program,
                        g.args.join(" "),
                        if g.spawn_env { " +spawn-env" } else { "" },
                        crate::config::phase_list(&g.phases)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    println!("  granted      programs: {}", fmtg(&a.granted.programs));
    println!("               detached: {}", fmtg(&a.granted.detached));
    println!(
        "               env: {}",
        if a.granted.env.is_empty() {
            "none".into()
        } else {
            a.granted.env.join(", ")
        }
    );
    match &a.remote_account {
        Some(_) => {
            println!("               search path: not used (programs run on the submit host)")
        }
        None => println!(
            "               search path: {}",
            a.granted.search_path.join(":")
        ),
    }
    println!("  effective    (a call must match both argument lists)");
    if a.effective.is_empty() {
        println!("               nothing");
    }
    for e in &a.effective {
        println!(
            "               {:<15} {:<24} declared [{}] ∩ granted [{}]{}  → {}",
            e.capability,
            e.program,
            e.declared_args.join(" "),
            e.granted_args.join(" "),
            if e.spawn_env { " +spawn-env" } else { "" },
            match (&e.path, &a.remote_account) {
                (Ok(p), Some(_)) if e.capability == "process.run" && !p.starts_with('/') =>
                    format!("{p} (the submit host's login PATH)"),
                (Ok(p), Some(_)) if e.capability == "process.run" =>
                    format!("{p} on the submit host"),
                (Ok(p), _) => p.clone(),
                (Err(why), _) => format!("NOT FOUND: {why}"),
            }
        );
        println!(
            "               {:<15} {} in: {}; runs {}",
            "",
            e.grant,
            if e.phases.is_empty() {
                "no export".to_string()
            } else {
                crate::config::phase_list(&e.phases)
            },
            e.runs_as
        );
    }
    if !a.by_phase.is_empty() {
        println!("  by export    (who runs what from which export)");
    }
    for v in &a.by_phase {
        if v.programs.is_empty() {
            println!("               {:<9} nothing", v.phase.name());
        }
        for (i, p) in v.programs.iter().enumerate() {
            println!(
                "               {:<9} {p}",
                if i == 0 { v.phase.name() } else { "" }
            );
        }
    }
    for m in &a.missing {
        println!("  missing      {m}");
    }
    for u in &a.unused {
        println!("  unused       {u}");
    }
    for w in &a.widening_reloads {
        println!("  WIDENED      {w}");
    }
    println!("  runs on      {}", a.runs_on);
    if let Some(v) = &a.tunnel_via {
        println!("  tunnels      each ready server is forwarded to 127.0.0.1 through ssh via {v}");
        if let Some(c) = &a.callback_tunnel {
            println!("  callbacks    {v} listens on {c} and forwards to this host's API (ssh -R); jobs call back there");
        }
    }
    if let Some(r) = &a.remote_account {
        println!("  runs as      {r}");
    }
    println!(
        "  run as       {}",
        if a.run_as.is_empty() && a.remote_account.is_some() {
            "no run_as prefix: every program runs as the remote account above".into()
        } else if a.run_as.is_empty() {
            "the host's own user".into()
        } else {
            format!(
                "{} (the default identity of this instance's grants; see each grant above)",
                a.run_as.join(" ")
            )
        }
    );
    let l = &a.limits;
    println!(
        "  limits       memory {} MiB, call {} s, command {} s, output {} bytes, {} concurrent calls,\n               {} programs per call, {} per minute, {} log lines per 10 s",
        l.memory_mib, l.call_timeout_secs, l.command_timeout_secs, l.output_bytes, l.concurrent_calls,
        l.max_runs_per_call, l.max_runs_per_minute, l.log_lines_per_10s
    );
    println!("  sandbox      no files, no environment, no network; every capability call audited in the state directory's audit.jsonl");
    println!();
}
