//! What PBS Professional, OpenPBS, Torque and Moab's Torque mode share.

use super::Phase;

/// `Unknown Job Id [Error] ID` and `ID Job has finished` (stderr of
/// `qstat`): the job is gone. Returns the id.
pub fn gone(line: &str) -> Option<String> {
    let line = line.trim();
    let rest = line.strip_prefix("qstat:").unwrap_or(line).trim();
    if rest.contains("Unknown Job Id") {
        return rest.split_whitespace().last().map(str::to_string);
    }
    if rest.contains("Job has finished") {
        return rest.split_whitespace().next().map(str::to_string);
    }
    None
}

/// PBS/Torque job states (qstat(1B)) and the meaning of `Exit_status`:
/// 0..255 the script's status, 256+N killed by signal N, negative: the
/// job could not be started. Returns the phase and a reason.
pub fn phase(state: &str, exit: Option<i32>) -> (Phase, String) {
    let p = match state {
        "Q" => Phase::Pending,
        "H" => Phase::Held,
        "W" => Phase::Waiting,
        "T" | "M" => Phase::Configuring,
        "R" | "B" => Phase::Running,
        "S" | "U" => Phase::Suspended,
        "E" => Phase::Exiting,
        "F" | "C" | "X" => match exit {
            Some(c) if c < 0 => {
                return (Phase::Failed, format!("could not start (exit status {c})"))
            }
            Some(c) if c > 256 => {
                let sig = c - 256;
                let phase = if matches!(sig, 9 | 15) {
                    Phase::Cancelled
                } else {
                    Phase::Failed
                };
                return (phase, format!("killed by signal {sig}"));
            }
            _ => Phase::Completed,
        },
        _ => Phase::Unknown,
    };
    (p, String::new())
}

/// The exit code worth reporting (a script's status, not a signal code).
pub fn exit_code(exit: Option<i32>) -> Option<i32> {
    exit.filter(|c| (0..256).contains(c))
}

/// A job's wall-clock limit and, while it runs, the time it has left, from
/// `Resource_List.walltime` and `resources_used.walltime` (`HH:MM:SS`, as
/// PBS Pro, OpenPBS and Torque print them). The time used is what the
/// job's MoM last reported, so the time left is the server's view, up to
/// one MoM update behind. No used time (not started, not yet reported) is
/// no time left, never the whole limit.
pub fn walltime(limit: Option<&str>, used: Option<&str>) -> (Option<u64>, Option<u64>) {
    let limit = limit.and_then(crate::parse::walltime_secs);
    let used = used.and_then(crate::parse::walltime_secs);
    let left = limit.zip(used).map(|(l, u)| l.saturating_sub(u));
    (limit, left)
}

#[cfg(test)]
mod tests {
    use super::walltime;

    #[test]
    fn limit_and_time_left_from_used() {
        assert_eq!(
            walltime(Some("01:00:00"), Some("00:10:05")),
            (Some(3600), Some(2995))
        );
        assert_eq!(walltime(Some("01:00:00"), None), (Some(3600), None));
        // Past the limit (the MoM has not killed it yet): nothing left.
        assert_eq!(
            walltime(Some("00:10:00"), Some("00:10:30")),
            (Some(600), Some(0))
        );
        assert_eq!(walltime(None, Some("00:10:00")), (None, None));
        assert_eq!(walltime(Some("bogus"), Some("00:01:00")), (None, None));
    }
}
