//! Declared vs granted, for a reviewer: the effective set of a loaded
//! plugin version, what it declares without a grant (missing), and what the
//! operator grants that it never declares (unused). `check` and `audit`
//! print this; the gate enforces the same intersection call by call.

use serde::Serialize;

use super::gate::{Gate, Kind};
use crate::config::{Identity, Phase};
use crate::model::ProgramUse;

/// One program the plugin may actually run.
#[derive(Debug, Clone, Serialize)]
pub struct Effective {
    /// `process.run`, `detached.start` or `ssh.run`.
    pub capability: &'static str,
    pub program: String,
    /// The absolute path it resolves to, or why it does not.
    pub path: Result<String, String>,
    /// Both must match a call's arguments.
    pub declared_args: Vec<String>,
    pub granted_args: Vec<String>,
    /// Receives the spawn's environment (declared and granted).
    pub spawn_env: bool,
    /// The grant in the config, e.g. `grants.programs[0]`.
    pub grant: String,
    /// The exports that can use it.
    pub phases: Vec<Phase>,
    /// As whom it runs.
    pub identity: Identity,
    /// The same, in words.
    pub runs_as: String,
}

/// What one export may run, and as whom: the reviewer's view.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseView {
    pub phase: Phase,
    /// `capability program [declared ∩ granted args] as …`; empty: nothing.
    pub programs: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Review {
    pub effective: Vec<Effective>,
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    pub unresolved: Vec<String>,
    /// Per export, in order: form, validate, submit, status, cancel.
    pub by_phase: Vec<PhaseView>,
}

pub fn review(gate: &Gate, section: &str) -> Review {
    let mut r = Review::default();
    let d = gate.declared();
    for (kind, declared, key) in [
        (Kind::Run, &d.programs, "grants.programs"),
        (Kind::Detached, &d.detached, "grants.detached"),
        (Kind::Ssh, &d.ssh, "grants.ssh"),
    ] {
        let grants = gate.grants(kind);
        let covers = |u: &ProgramUse, program: &str| u.program == "*" || u.program == program;
        for u in declared.iter() {
            if !grants.iter().any(|g| covers(u, &g.grant.program)) {
                r.missing.push(format!(
                    "the plugin declares {} `{}` [{}] but {section} has no {key} entry for it",
                    kind.audit_name(),
                    u.program,
                    u.args.join(" ")
                ));
            }
        }
        for g in grants {
            if let Err(why) = &g.path {
                r.unresolved
                    .push(format!("{section} {key} `{}`: {why}", g.grant.program));
            }
            let uses: Vec<&ProgramUse> = declared
                .iter()
                .filter(|u| covers(u, &g.grant.program))
                .collect();
            if uses.is_empty() {
                r.unused.push(format!(
                    "{section} {key} grants `{}` but the plugin never declares it",
                    g.grant.program
                ));
                continue;
            }
            if g.grant.spawn_env && !uses.iter().any(|u| u.spawn_env) {
                r.unused.push(format!(
                    "{section} {key} `{}` grants spawn_env, which the plugin never asks for",
                    g.grant.program
                ));
            }
            let phases: Vec<Phase> = Phase::ALL.into_iter().filter(|p| g.usable_in(*p)).collect();
            for p in &g.grant.phases {
                if !phases.contains(p) {
                    r.unused.push(format!(
                        "{section} {} `{}` lists phase {p}, but it runs {} and {p} calls are not made for one user, so {p} can never run it; give {p} its own grant with run_as = \"host\"",
                        g.key,
                        g.grant.program,
                        g.identity.describe()
                    ));
                }
            }
            for u in uses {
                r.effective.push(Effective {
                    grant: g.key.clone(),
                    phases: phases.clone(),
                    identity: g.identity.clone(),
                    runs_as: g.identity.describe(),
                    capability: kind.audit_name(),
                    program: g.grant.program.clone(),
                    path: g.path.clone().map(|p| p.display().to_string()),
                    declared_args: u.args.clone(),
                    granted_args: g.grant.args.clone(),
                    spawn_env: u.spawn_env && g.grant.spawn_env,
                });
            }
        }
    }
    r.by_phase = Phase::ALL
        .into_iter()
        .map(|phase| PhaseView {
            phase,
            programs: r
                .effective
                .iter()
                .filter(|e| e.phases.contains(&phase))
                .map(|e| {
                    format!(
                        "{} {} [{}] ∩ [{}]{} {}",
                        e.capability,
                        e.program,
                        e.declared_args.join(" "),
                        e.granted_args.join(" "),
                        if e.spawn_env { " +spawn-env" } else { "" },
                        e.runs_as
                    )
                })
                .collect(),
        })
        .collect();
    r
}
