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
