//! Parsing helpers that scheduler plugins share.

/// Finds the job id in a submit command's output, whatever the scheduler:
///
/// | output | id |
/// |---|---|
/// | `Submitted batch job 42` | `42` |
/// | `42;cluster` (Slurm `--parsable` with a cluster) | `42` |
/// | `Job <42> is submitted to queue <normal>.` (LSF) | `42` |
/// | `42.pbs01` (PBS, Torque) | `42.pbs01` |
/// | `Your job 42 ("name") has been submitted` (Grid Engine) | `42` |
/// | `1 job(s) submitted to cluster 42.` (HTCondor) | `42` |
/// | blank lines, then `Moab.42` or `42` (Moab) | `Moab.42` / `42` |
///
/// Noise lines (warnings, banners) before the id are skipped: the last line
/// that has an id wins.
pub fn job_id(output: &str) -> Option<String> {
    output.lines().rev().find_map(job_id_in_line)
}

fn job_id_in_line(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    // HTCondor: "N job(s) submitted to cluster M."
    if let Some(pos) = words.iter().position(|w| *w == "cluster") {
        if line.contains("submitted to cluster") {
            return words
                .get(pos + 1)
                .map(|w| w.trim_end_matches('.'))
                .filter(|w| is_numeric(w))
                .map(str::to_string);
        }
    }
    // LSF: "Job <N> is submitted to ..."
    if let Some(rest) = line.strip_prefix("Job <") {
        return rest
            .split('>')
            .next()
            .filter(|w| is_numeric(w))
            .map(str::to_string);
    }
    // Grid Engine: "Your job N ("name") has been submitted"
    // Grid Engine array: "Your job-array N.1-3:1 ("name") has been submitted"
    if line.starts_with("Your job") && line.contains("has been submitted") {
        return words
            .get(2)
            .map(|w| w.split('.').next().unwrap_or(w))
            .filter(|w| is_numeric(w))
            .map(str::to_string);
    }
    // Slurm: "Submitted batch job N" (possibly "... on cluster C")
    if let Some(rest) = line.strip_prefix("Submitted batch job ") {
        return rest
            .split_whitespace()
            .next()
            .filter(|w| is_numeric(w))
            .map(str::to_string);
    }
    // A bare id: "N", "N;cluster", "N.server", "Moab.N"
    if words.len() == 1 {
        let w = words[0].split(';').next().unwrap_or("");
        let plausible = !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b))
            && w.bytes().any(|b| b.is_ascii_digit())
            && (w.as_bytes()[0].is_ascii_digit() || w.contains('.'));
        if plausible {
            return Some(w.to_string());
        }
    }
    None
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The first host of a scheduler's execution-host field:
///
/// | field | host |
/// |---|---|
/// | `node01.cluster.example.org` | `node01.cluster.example.org` |
/// | `node[01-02,05]` (Slurm node list) | `node01` |
/// | `node[7]` | `node7` |
/// | `node01/0*2+node02/0*2` (PBS `exec_host`) | `node01` |
/// | `2*node01:3*node02` or `2*node01 node02` (LSF) | `node01` |
/// | `slot1@node01.example.org` (HTCondor) | `node01.example.org` |
/// | `all.q@node01` (Grid Engine queue instance) | `node01` |
///
/// Returns `None` for empty fields and placeholders (`n/a`, `(null)`, `-`).
pub fn first_host(field: &str) -> Option<String> {
    let field = field.trim();
    if field.is_empty() || matches!(field, "n/a" | "N/A" | "(null)" | "-" | "None" | "--") {
        return None;
    }
    // Take the first element of a list: '+' (PBS), ':' or ' ' (LSF), ',' (Slurm
    // outside brackets).
    let mut first = String::new();
    let mut depth = 0;
    for c in field.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '+' | ':' | ' ' | ',' if depth == 0 => break,
            _ => {}
        }
        first.push(c);
    }
    let mut host = first.as_str();
    // LSF "N*host"
    if let Some((n, h)) = host.split_once('*') {
        if is_numeric(n) {
            host = h;
        }
    }
    // PBS "host/slot" or "host/0*2"
    if let Some((h, _)) = host.split_once('/') {
        host = h;
    }
    // HTCondor "slot1@host", Grid Engine "queue@host"
    if let Some((_, h)) = host.rsplit_once('@') {
        host = h;
    }
    // Slurm "prefix[01-02,05]suffix"
    if let Some(open) = host.find('[') {
        let close = host[open..].find(']')? + open;
        let inner = &host[open + 1..close];
        let first_range = inner.split(',').next()?;
        let first_num = first_range.split('-').next()?;
        let expanded = format!("{}{}{}", &host[..open], first_num, &host[close + 1..]);
        return (!expanded.is_empty()).then_some(expanded);
    }
    (!host.is_empty()).then(|| host.to_string())
}

/// One job's attributes from `qstat -f` (PBS Pro, OpenPBS, Torque).
pub type QstatJob = (String, std::collections::BTreeMap<String, String>);

/// Parses `qstat -f` output: `Job Id: ID` blocks of indented `key = value`
/// lines; a line starting with a tab continues the previous value (PBS wraps
/// long values). Anything else before the first block is an error, so an
/// error message on stdout is never read as "no jobs".
pub fn qstat_full(text: &str) -> Result<Vec<QstatJob>, String> {
    let mut jobs: Vec<QstatJob> = Vec::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(id) = line.trim().strip_prefix("Job Id:") {
            jobs.push((id.trim().to_string(), Default::default()));
            last_key = None;
            continue;
        }
        let Some((_, attrs)) = jobs.last_mut() else {
            return Err(format!("unexpected line before any job: {:?}", line.trim()));
        };
        if line.starts_with('\t') {
            if let Some(v) = last_key.as_ref().and_then(|k| attrs.get_mut(k)) {
                v.push_str(line.trim());
                continue;
            }
        }
        match line.split_once(" = ") {
            Some((k, v)) => {
                let k = k.trim().to_string();
                attrs.insert(k.clone(), v.trim().to_string());
                last_key = Some(k);
            }
            None => return Err(format!("unexpected line {:?}", line.trim())),
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_from_every_scheduler() {
        assert_eq!(job_id("Submitted batch job 42\n").as_deref(), Some("42"));
        assert_eq!(job_id("42;cluster2\n").as_deref(), Some("42"));
        assert_eq!(
            job_id("sbatch: warning: something\n\nSubmitted batch job 7 on cluster c2\n")
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            job_id("Job <123> is submitted to queue <normal>.\n").as_deref(),
            Some("123")
        );
        assert_eq!(
            job_id("9876.pbs-server\n").as_deref(),
            Some("9876.pbs-server")
        );
        assert_eq!(
            job_id("Your job 55 (\"jupyter\") has been submitted\n").as_deref(),
            Some("55")
        );
        assert_eq!(
            job_id("Submitting job(s).\n1 job(s) submitted to cluster 301.\n").as_deref(),
            Some("301")
        );
        assert_eq!(job_id("\n\nMoab.17\n\n").as_deref(), Some("Moab.17"));
        assert_eq!(job_id("error: no partition\n"), None);
        assert_eq!(job_id(""), None);
    }

    #[test]
    fn qstat_full_blocks_and_continuations() {
        let text = "Job Id: 1.s\n    job_state = R\n    comment = a long\n\tcomment\nJob Id: 2.s\n    job_state = Q\n";
        let jobs = qstat_full(text).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].1["comment"], "a longcomment");
        assert_eq!(jobs[1].1["job_state"], "Q");
        assert!(qstat_full("pbs_iff: cannot connect\n").is_err());
    }

    #[test]
    fn first_host_of_every_format() {
        assert_eq!(
            first_host("node01.example.org").as_deref(),
            Some("node01.example.org")
        );
        assert_eq!(first_host("node[01-02,05]").as_deref(), Some("node01"));
        assert_eq!(first_host("gpu[7]").as_deref(), Some("gpu7"));
        assert_eq!(first_host("a[3-4],b1").as_deref(), Some("a3"));
        assert_eq!(
            first_host("node01/0*2+node02/0*2").as_deref(),
            Some("node01")
        );
        assert_eq!(first_host("node01/3").as_deref(), Some("node01"));
        assert_eq!(first_host("2*node01:3*node02").as_deref(), Some("node01"));
        assert_eq!(first_host("4*hostA hostB").as_deref(), Some("hostA"));
        assert_eq!(
            first_host("slot1@node9.example.org").as_deref(),
            Some("node9.example.org")
        );
        assert_eq!(first_host("all.q@vm").as_deref(), Some("vm"));
        assert_eq!(first_host("n/a"), None);
        assert_eq!(first_host("  "), None);
        assert_eq!(first_host("(null)"), None);
    }
}

/// A scheduler duration in seconds: `[D-]HH:MM:SS`, `HH:MM:SS`, `MM:SS`,
/// `D-HH`, `D-HH:MM` or plain minutes (Slurm's `%l`/`%L`, PBS `walltime`);
/// `UNLIMITED`, `NOT_SET`, `INVALID`, `N/A` and the like are `None`.
pub fn duration_secs(t: &str) -> Option<u64> {
    let t = t.trim();
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let (h, m, s) = match (t.contains('-'), parts.as_slice()) {
        (_, [h, m, s]) => (*h, *m, *s),
        (true, [h, m]) => (*h, *m, 0),
        (false, [m, s]) => (0, *m, *s),
        (true, [h]) => (*h, 0, 0),
        (false, [m]) => (0, *m, 0),
        _ => return None,
    };
    if m >= 60 && parts.len() > 1 || s >= 60 {
        return None;
    }
    days.checked_mul(24)?
        .checked_add(h)?
        .checked_mul(60)?
        .checked_add(m)?
        .checked_mul(60)?
        .checked_add(s)
}

#[cfg(test)]
mod duration_tests {
    use super::duration_secs;

    #[test]
    fn scheduler_durations() {
        assert_eq!(duration_secs("1:00:00"), Some(3600));
        assert_eq!(duration_secs("45:00"), Some(2700));
        assert_eq!(duration_secs("2-00:00:00"), Some(172_800));
        assert_eq!(duration_secs("1-12"), Some(129_600));
        assert_eq!(duration_secs("1-12:30"), Some(131_400));
        assert_eq!(duration_secs("90"), Some(5400));
        for none in [
            "UNLIMITED",
            "NOT_SET",
            "INVALID",
            "N/A",
            "",
            "1:xx:00",
            "1:61:00",
        ] {
            assert_eq!(duration_secs(none), None, "{none}");
        }
    }
}

/// A PBS-style wall time in seconds: `[[H:]M:]S[.fraction]` (PBS Pro,
/// OpenPBS and Torque `walltime`, Grid Engine `h_rt`); a bare number is
/// seconds, not minutes as in [`duration_secs`], and hours may pass 24
/// (`120:00:00`). The fraction is dropped. Anything else (`UNLIMITED`,
/// `-`, a negative or empty part) is `None`.
pub fn walltime_secs(t: &str) -> Option<u64> {
    let t = t.trim();
    let t = match t.split_once('.') {
        Some((whole, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => whole,
        Some(_) => return None,
        None => t,
    };
    let parts: Vec<&str> = t.split(':').collect();
    if parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    parts.iter().try_fold(0u64, |acc, p| {
        acc.checked_mul(60)?.checked_add(p.parse().ok()?)
    })
}

#[cfg(test)]
mod walltime_tests {
    use super::walltime_secs;

    #[test]
    fn pbs_and_grid_engine_walltimes() {
        assert_eq!(walltime_secs("01:00:00"), Some(3600));
        assert_eq!(walltime_secs("120:00:00"), Some(432_000));
        assert_eq!(walltime_secs("00:02:57"), Some(177));
        assert_eq!(walltime_secs("3600"), Some(3600));
        assert_eq!(walltime_secs("90:00"), Some(5400));
        assert_eq!(walltime_secs("1:0:0"), Some(3600));
        assert_eq!(walltime_secs(" 86400 "), Some(86_400));
        assert_eq!(walltime_secs("00:00:14.250"), Some(14));
        for none in [
            "",
            "-",
            "UNLIMITED",
            "1:00:00:00",
            "1::00",
            "-5",
            "1:-1:00",
            "1.5.3",
            "12a",
            "1:00:00.x",
        ] {
            assert_eq!(walltime_secs(none), None, "{none}");
        }
    }
}
