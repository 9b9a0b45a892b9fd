//! Value formats shared by the schedulers: how a memory request in MiB
//! and a wall time in minutes are written.

/// `HH:MM:SS` (Slurm, PBS, Torque, Grid Engine, Moab).
pub fn hms(min: u64) -> String {
    format!("{:02}:{:02}:00", min / 60, min % 60)
}
/// `H:MM` (LSF `-W`).
pub fn hm(min: u64) -> String {
    format!("{}:{:02}", min / 60, min % 60)
}
/// Seconds (HTCondor).
pub fn seconds(min: u64) -> String {
    (min * 60).to_string()
}
/// `4096M` (Slurm, Grid Engine).
pub fn mega(mib: u64) -> String {
    format!("{mib}M")
}
/// `4096mb` (PBS, Torque, Moab).
pub fn mb(mib: u64) -> String {
    format!("{mib}mb")
}
/// `4096` (MiB as a bare number: LSF with MB units, HTCondor).
pub fn bare(mib: u64) -> String {
    mib.to_string()
}
