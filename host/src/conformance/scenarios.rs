//! The scenarios, in the order the table prints them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::fake::{self, Reply, Script};
use super::{Bench, Outcome, Row};
use crate::capability::gate::CallContext;
use crate::config::Phase;
use crate::model::{FieldKind, Job, JobSpec, JobState, RawOptions, SpawnRef};
use crate::runtime::bindings::ApiVersion;
use crate::runtime::plugin::{FindJobsError, ValidateError};

/// The hub token the kit hands to submit; it must never be in argv.
const SECRET: &str = "conformance-secret-hub-token-7f3a9c";
const SPAWN: &str = "conf-spawn-1";
/// Jobs asked about in one status call.
const MANY: usize = 25;

fn row(scenario: &'static str, outcome: Outcome) -> Row {
    Row { scenario, outcome }
}

pub(super) async fn all(b: &Bench) -> Vec<Row> {
    let mut rows = vec![describe(b)];
    let (form_row, form) = form(b).await;
    rows.push(form_row);
    rows.push(validate(b, form.as_ref()).await);
    let Some(p) = b.profile else {
        let why = "no scheduler profile for this plugin (give --scheduler NAME)";
        for s in [
            "submit: argv only, the hub's token out of argv",
            "status: many jobs in one call",
            "status: unknown on a dead controller",
            "status: done only on positive evidence",
            "status: mangled output survives",
            "cancel is idempotent",
            "find-jobs after a crash",
        ] {
            rows.push(row(s, Outcome::Skip(why.into())));
        }
        return rows;
    };
    let (submit_row, job) = submit(b, p).await;
    rows.push(submit_row);
    let job = job.unwrap_or_else(|| Job {
        job_id: (p.job_id)("101"),
        user: "alice".into(),
        state: String::new(),
    });
    rows.push(status_many(b, p, &job).await);
    rows.push(dead_controller(b, p, &job).await);
    rows.push(positive_evidence(b, p, &job).await);
    rows.push(mangled(b, p, &job).await);
    rows.push(cancel(b, p, &job).await);
    rows.push(find_jobs(b, p).await);
    rows
}

fn describe(b: &Bench) -> Row {
    let l = b.instance.current();
    let d = &l.descriptor;
    let mut problems = Vec::new();
    if d.name.trim().is_empty() {
        problems.push("describe() has an empty name".to_string());
    }
    if d.version.trim().is_empty() {
        problems.push("describe() has an empty version".to_string());
    }
    let all: Vec<_> = (d.capabilities.programs.iter())
        .chain(&d.capabilities.ssh)
        .chain(&d.capabilities.detached)
        .collect();
    for shell in ["sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish"] {
        if all
            .iter()
            .any(|u| u.program.rsplit('/').next() == Some(shell))
        {
            problems.push(format!(
                "declares the shell `{shell}`: run programs with argv instead"
            ));
        }
    }
    if problems.is_empty() {
        row(
            "describe is sane",
            Outcome::Pass(format!(
                "{} {}, API {}, {} declared program uses",
                d.name,
                d.version,
                l.api,
                all.len()
            )),
        )
    } else {
        row("describe is sane", Outcome::Fail(problems.join("; ")))
    }
}

async fn form(b: &Bench) -> (Row, Option<crate::model::FormSchema>) {
    match b.instance.form(&b.user).await {
        Ok(f) => (
            row(
                "form schema is valid",
                Outcome::Pass(format!(
                    "{} fields, {} profiles; the host's schema checks pass",
                    f.fields.len(),
                    f.profiles.len()
                )),
            ),
            Some(f),
        ),
        Err(e) => (
            row("form schema is valid", Outcome::Fail(e.to_string())),
            None,
        ),
    }
}

/// A value the form's rules must refuse, per field kind.
fn bad_value(kind: &FieldKind) -> Option<String> {
    match kind {
        FieldKind::Integer { max: Some(m), .. } => Some((m.saturating_add(1)).to_string()),
        FieldKind::Integer { .. } => Some("twelve".into()),
        FieldKind::Number { max: Some(m), .. } => Some((m + 1.0).to_string()),
        FieldKind::Number { .. } => Some("a lot".into()),
        FieldKind::Choice { .. } => Some("not-one-of-the-choices".into()),
        FieldKind::Boolean => Some("maybe".into()),
        FieldKind::Text {
            max_length: Some(n),
            ..
        } => Some("x".repeat(*n as usize + 1)),
        FieldKind::Text { .. } => Some("$(touch /tmp/pwned)\n".into()),
    }
}

async fn validate(b: &Bench, form: Option<&crate::model::FormSchema>) -> Row {
    const S: &str = "validate refuses bad values naming the field";
    let Some(form) = form else {
        return row(S, Outcome::Skip("no form".into()));
    };
    let mut problems = Vec::new();
    // The defaults are a valid form.
    if let Err(e) = b.instance.validate(&b.user, &RawOptions::new()).await {
        problems.push(format!("the form's own defaults are refused: {e}"));
    }
    let mut checked = 0;
    for f in &form.fields {
        let Some(v) = bad_value(&f.kind) else {
            continue;
        };
        // Under a profile that leaves the field to the user (a fixed value
        // replaces whatever is sent, by design).
        let mut raw: RawOptions = [(f.id.clone(), vec![v.clone()])].into_iter().collect();
        if !form.profiles.is_empty() {
            match form.profiles.iter().find(|p| !p.fixed.contains_key(&f.id)) {
                Some(p) => {
                    raw.insert(crate::form::PROFILE_FIELD.into(), vec![p.id.clone()]);
                }
                None => continue,
            }
        }
        checked += 1;
        match b.instance.validate(&b.user, &raw).await {
            Err(ValidateError::Fields(errs)) if errs.iter().any(|e| e.field == f.id) => {}
            Err(ValidateError::Fields(errs)) => problems.push(format!(
                "field `{}` = {:?}: refused, but the errors name {:?}",
                f.id,
                crate::sanitize::text(&v, 40),
                errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>()
            )),
            Err(ValidateError::Call(e)) => {
                problems.push(format!("field `{}`: the call failed: {e}", f.id))
            }
            Ok(_)
                if matches!(
                    f.kind,
                    FieldKind::Text {
                        max_length: None,
                        pattern: None,
                        ..
                    }
                ) =>
            {
                // Free text without rules: the plugin's business.
                checked -= 1;
            }
            Ok(_) => problems.push(format!(
                "field `{}` accepted {:?}",
                f.id,
                crate::sanitize::text(&v, 40)
            )),
        }
    }
    if problems.is_empty() {
        row(
            S,
            Outcome::Pass(format!(
                "defaults accepted; {checked} bad values refused, each naming its field"
            )),
        )
    } else {
        row(S, Outcome::Fail(problems.join("; ")))
    }
}

fn ctx(phase: Phase) -> CallContext {
    CallContext {
        spawn_id: Some(SPAWN.into()),
        user: Some("alice".into()),
        spawn_env: Arc::new(vec![("JUPYTERHUB_API_TOKEN".into(), SECRET.into())]),
        ..CallContext::new(phase, Some("alice"))
    }
}

fn script(entries: &[(&str, Reply)]) -> Script {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect::<BTreeMap<_, _>>()
}

fn set(b: &Bench, s: &Script) -> Result<(), Outcome> {
    fake::set_script(&b.bin, s).map_err(|e| Outcome::Fail(format!("kit: {e:#}")))
}

async fn submit(b: &Bench, p: &super::Profile) -> (Row, Option<Job>) {
    const S: &str = "submit: argv only, the hub's token out of argv";
    if let Err(o) = set(b, &script(&[(p.submit, Reply::ok((p.submitted)("101")))])) {
        return (row(S, o), None);
    }
    let options = match b.instance.validate(&b.user, &RawOptions::new()).await {
        Ok(o) => o,
        Err(e) => return (row(S, Outcome::Fail(format!("the defaults: {e}"))), None),
    };
    let spec = JobSpec {
        spawn_id: SPAWN.into(),
        user: b.user.clone(),
        options,
        cmd: vec!["jupyterhub-singleuser".into(), "--debug".into()],
        env_names: vec!["JUPYTERHUB_API_TOKEN".into()],
        callback_url: "http://127.0.0.1:9/v1/spawns/conf-spawn-1/ready".into(),
        home: Some("/home/alice".into()),
    };
    let sub = b.instance.submit(ctx(Phase::Submit), &spec).await;
    let calls = fake::calls(&b.bin);
    let sub = match sub {
        Ok(s) => s,
        Err(e) => return (row(S, Outcome::Fail(format!("submit failed: {e}"))), None),
    };
    let mut problems = Vec::new();
    if sub.job_id != (p.job_id)("101") {
        problems.push(format!(
            "returned job id {:?}, the scheduler said {:?}",
            sub.job_id,
            (p.job_id)("101")
        ));
    }
    let submits: Vec<_> = calls.iter().filter(|c| c.program == p.submit).collect();
    if submits.len() != 1 {
        problems.push(format!(
            "ran `{}` {} times, not once",
            p.submit,
            submits.len()
        ));
    }
    for c in &calls {
        if c.argv.iter().any(|a| a.contains(SECRET)) {
            problems.push(format!("the hub's token is in the argv of `{}`", c.program));
        }
    }
    if let Some(c) = submits.first() {
        if c.stdin.contains(SECRET) {
            problems.push("the hub's token is in the batch script".into());
        }
        if !c
            .env
            .iter()
            .any(|e| e == &format!("JUPYTERHUB_API_TOKEN={SECRET}"))
        {
            problems.push(format!(
                "`{}` did not get the spawn's environment (declare it with spawn-env)",
                p.submit
            ));
        }
    }
    let job = Job {
        job_id: sub.job_id.clone(),
        user: "alice".into(),
        state: sub.state,
    };
    if problems.is_empty() {
        (
            row(
                S,
                Outcome::Pass(format!(
                    "job {} from one `{}`; token only in its environment",
                    job.job_id, p.submit
                )),
            ),
            Some(job),
        )
    } else {
        (row(S, Outcome::Fail(problems.join("; "))), Some(job))
    }
}

/// `job` and `MANY - 1` others the kit made up.
fn many(p: &super::Profile, job: &Job) -> Vec<Job> {
    let mut jobs = vec![job.clone()];
    for i in 1..MANY {
        jobs.push(Job {
            job_id: (p.job_id)(&(500 + i).to_string()),
            user: "alice".into(),
            state: String::new(),
        });
    }
    jobs
}

async fn status_many(b: &Bench, p: &super::Profile, job: &Job) -> Row {
    const S: &str = "status: many jobs in one call";
    let jobs = many(p, job);
    let listing = (p.running)(std::slice::from_ref(job));
    if let Err(o) = set(b, &script(&[(p.status, listing)])) {
        return row(S, o);
    }
    let states = match b.instance.status(&jobs).await {
        Ok(s) => s,
        Err(e) => return row(S, Outcome::Fail(e.to_string())),
    };
    let runs = fake::calls(&b.bin)
        .iter()
        .filter(|c| c.program == p.status)
        .count();
    let mut problems = Vec::new();
    if runs != 1 {
        problems.push(format!("{MANY} jobs took {runs} runs of `{}`", p.status));
    }
    if !matches!(&states[0], JobState::Running { host: Some(_) }) {
        problems.push(format!(
            "job {} listed running on node07 reads {:?}",
            job.job_id, states[0]
        ));
    }
    if states[1..]
        .iter()
        .any(|s| matches!(s, JobState::Running { .. }))
    {
        problems.push("a job the scheduler did not list reads running".into());
    }
    if problems.is_empty() {
        row(
            S,
            Outcome::Pass(format!(
                "{MANY} jobs, one `{}`; the listed job runs on its node",
                p.status
            )),
        )
    } else {
        row(S, Outcome::Fail(problems.join("; ")))
    }
}

async fn dead_controller(b: &Bench, p: &super::Profile, job: &Job) -> Row {
    const S: &str = "status: unknown on a dead controller";
    let down = Reply {
        stderr: format!(
            "{}: error: cannot connect to the controller: Connection refused\n",
            p.status
        ),
        code: 1,
        ..Default::default()
    };
    if let Err(o) = set(b, &script(&[(p.status, down)])) {
        return row(S, o);
    }
    match b.instance.status(&many(p, job)).await {
        Ok(states) if states.iter().all(|s| matches!(s, JobState::Unknown { .. })) => {
            row(S, Outcome::Pass(format!("all {MANY} jobs unknown")))
        }
        Ok(states) => {
            row(
                S,
                Outcome::Fail(format!(
                "a dead controller gave {:?} (must be unknown: the host never ends a job on that)",
                states.iter().find(|s| !matches!(s, JobState::Unknown { .. }))
            )),
            )
        }
        Err(e) => row(S, Outcome::Fail(e.to_string())),
    }
}

async fn positive_evidence(b: &Bench, p: &super::Profile, job: &Job) -> Row {
    const S: &str = "status: done only on positive evidence";
    let cases = [
        (
            "an answer cut at the output cap",
            (p.running)(std::slice::from_ref(job)).repeat(1 + (2 << 20) / 48),
        ),
        (
            "a warning instead of a listing (exit 0)",
            Reply::ok("Warning: the controller is busy, try again later\n".into()),
        ),
    ];
    let mut problems = Vec::new();
    for (what, reply) in cases {
        if let Err(o) = set(b, &script(&[(p.status, reply)])) {
            return row(S, o);
        }
        match b.instance.status(std::slice::from_ref(job)).await {
            Ok(states) if matches!(states[0], JobState::Done { .. }) => {
                problems.push(format!("{what} read as done: {:?}", states[0]))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    if problems.is_empty() {
        row(
            S,
            Outcome::Pass("a cut answer and a warning are not taken as done".into()),
        )
    } else {
        row(S, Outcome::Fail(problems.join("; ")))
    }
}

async fn mangled(b: &Bench, p: &super::Profile, job: &Job) -> Row {
    const S: &str = "status: mangled output survives";
    let jobs = many(p, job);
    let listing = (p.running)(&jobs);
    // The listing as the plugin's own command asks for it.
    if let Err(o) = set(b, &script(&[(p.status, listing)])) {
        return row(S, o);
    }
    let _ = b.instance.status(&jobs).await;
    let asked = fake::calls(&b.bin)
        .into_iter()
        .find(|c| c.program == p.status)
        .map(|c| c.argv)
        .unwrap_or_default();
    let clean = (p.running)(&jobs).render(fake::format_spec(&asked).as_deref());
    let variants = mangle(&clean, 40);
    for (i, v) in variants.iter().enumerate() {
        if let Err(o) = set(b, &script(&[(p.status, Reply::ok(v.clone()))])) {
            return row(S, o);
        }
        match b.instance.status(&jobs).await {
            Ok(s) if s.len() == jobs.len() => {}
            Ok(s) => {
                return row(
                    S,
                    Outcome::Fail(format!(
                        "variant {i}: {} answers for {} jobs",
                        s.len(),
                        jobs.len()
                    )),
                )
            }
            Err(e) => return row(S, Outcome::Fail(format!("variant {i}: {e}"))),
        }
    }
    row(
        S,
        Outcome::Pass(format!(
            "{} cut, shuffled and corrupted listings: no failed call, one answer per job",
            variants.len()
        )),
    )
}

/// Seeded broken variants of a listing: cut, lines shuffled or dropped,
/// bytes flipped, garbage appended.
fn mangle(s: &str, n: usize) -> Vec<String> {
    let mut seed: u64 = 0x5eed_c0ff_ee00_0001;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bytes = s.as_bytes();
    (0..n)
        .map(|i| {
            let r = next() as usize;
            match i % 5 {
                0 => String::from_utf8_lossy(&bytes[..r % bytes.len().max(1)]).into_owned(),
                1 => {
                    let mut lines: Vec<&str> = s.lines().collect();
                    for k in (1..lines.len()).rev() {
                        lines.swap(k, next() as usize % (k + 1));
                    }
                    lines.join("\n")
                }
                2 => s
                    .lines()
                    .filter(|_| next() % 3 != 0)
                    .collect::<Vec<_>>()
                    .join("\n"),
                3 => {
                    let mut b = bytes.to_vec();
                    for _ in 0..(1 + r % 8) {
                        if !b.is_empty() {
                            let at = next() as usize % b.len();
                            b[at] = (next() % 256) as u8;
                        }
                    }
                    String::from_utf8_lossy(&b).into_owned()
                }
                _ => format!("{s}\n\u{0}<<<\"|||{}>>>\n", "x".repeat(r % 300)),
            }
        })
        .collect()
}

async fn cancel(b: &Bench, p: &super::Profile, job: &Job) -> Row {
    const S: &str = "cancel is idempotent";
    let mut problems = Vec::new();
    for (what, reply) in [
        ("a live job", Reply::ok(String::new())),
        ("an ended job", (p.gone)(&job.job_id)),
    ] {
        if let Err(o) = set(b, &script(&[(p.cancel, reply)])) {
            return row(S, o);
        }
        if let Err(e) = b.instance.cancel(ctx(Phase::Cancel), job).await {
            problems.push(format!("cancel of {what}: {e}"));
        }
        let calls = fake::calls(&b.bin);
        let ran = calls.iter().filter(|c| c.program == p.cancel).count();
        if ran == 0 && what == "a live job" {
            problems.push(format!("cancel ran no `{}`", p.cancel));
        }
        if !calls
            .iter()
            .filter(|c| c.program == p.cancel)
            .all(|c| c.argv.iter().any(|a| a.contains(&job.job_id)))
        {
            problems.push(format!("`{}` was not given the job id", p.cancel));
        }
    }
    if problems.is_empty() {
        row(
            S,
            Outcome::Pass("a live job and an ended one both cancel cleanly".into()),
        )
    } else {
        row(S, Outcome::Fail(problems.join("; ")))
    }
}

async fn find_jobs(b: &Bench, p: &super::Profile) -> Row {
    const S: &str = "find-jobs after a crash";
    if b.instance.current().api < ApiVersion::V0_2 {
        return row(
            S,
            Outcome::Skip(format!(
                "API {}: no find-jobs (the host cannot adopt this plugin's jobs after a crash during submit)",
                b.instance.current().api
            )),
        );
    }
    let refs = |ids: &[&str]| -> Vec<SpawnRef> {
        ids.iter()
            .map(|i| SpawnRef {
                spawn_id: i.to_string(),
                user: "alice".into(),
            })
            .collect()
    };
    let listing = (p.tagged)(&[
        (
            (p.job_id)("301"),
            "jupyterhub-sp-found".into(),
            "alice".into(),
        ),
        (
            (p.job_id)("302"),
            "jupyterhub-sp-foundx".into(),
            "alice".into(),
        ),
        ((p.job_id)("303"), "other-job".into(), "alice".into()),
    ]);
    if let Err(o) = set(b, &script(&[(p.find, listing)])) {
        return row(S, o);
    }
    let mut problems = Vec::new();
    match b.instance.find_jobs(&refs(&["sp-found", "sp-none"])).await {
        Ok(found) => {
            let got: Vec<(&str, &str)> = found
                .iter()
                .map(|f| (f.spawn_id.as_str(), f.job_id.as_str()))
                .collect();
            let want_job = (p.job_id)("301");
            let listed = (p.found_id)("301");
            let ok = matches!(got.as_slice(), [("sp-found", j)] if *j == want_job || *j == listed);
            if !ok {
                problems.push(format!(
                    "found {got:?}; the scheduler lists job {want_job} for sp-found only"
                ));
            }
        }
        Err(FindJobsError::Unsupported(m)) => {
            return row(S, Outcome::Fail(format!("unsupported: {m}")))
        }
        Err(e) => problems.push(format!("with a good listing: {e}")),
    }
    let runs = fake::calls(&b.bin)
        .iter()
        .filter(|c| c.program == p.find)
        .count();
    if runs != 1 {
        problems.push(format!("2 spawns took {runs} runs of `{}`", p.find));
    }
    let down = Reply {
        stderr: "error: cannot connect to the controller: Connection refused\n".into(),
        code: 1,
        ..Default::default()
    };
    if let Err(o) = set(b, &script(&[(p.find, down)])) {
        return row(S, o);
    }
    if let Ok(found) = b.instance.find_jobs(&refs(&["sp-found"])).await {
        problems.push(format!(
            "a dead controller gave a complete answer ({} jobs): the host would submit again",
            found.len()
        ));
    }
    if problems.is_empty() {
        row(
            S,
            Outcome::Pass(
                "the tagged job found with one command; a dead controller is not \"no job\"".into(),
            ),
        )
    } else {
        row(S, Outcome::Fail(problems.join("; ")))
    }
}
