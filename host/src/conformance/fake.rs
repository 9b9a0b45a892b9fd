//! The scripted fake scheduler programs of the conformance kit: the
//! `wasmspawner` binary itself, linked under a scheduler program's name
//! (`sbatch`, `squeue`, …) into a kit's private `bin/` directory. Run that
//! way it records its call and prints what the kit scripted — no shell, no
//! real scheduler.
//!
//! A directory is a fake `bin/` only when it holds [`MARKER`] and is
//! private to the user (0700, owned by them); anything else runs the
//! normal command line.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file that marks a kit's fake `bin/` directory.
pub const MARKER: &str = ".wasmspawner-conformance-fake";

/// What one fake program does when called.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub code: i32,
    /// Rows printed after `stdout` in the `--format=`/`-o` layout the call
    /// asks for (Slurm's `%i|%T|…`), each field by its letter: so any
    /// plugin's own format choice gets a real-looking answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<BTreeMap<char, String>>,
}

impl Reply {
    /// `stdout`, exit 0.
    pub fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            ..Default::default()
        }
    }

    /// The same answer `n` times over (to go past the output cap).
    pub fn repeat(&self, n: usize) -> Reply {
        Reply {
            stdout: self.stdout.repeat(n),
            rows: std::iter::repeat_n(self.rows.clone(), n)
                .flatten()
                .collect(),
            ..self.clone()
        }
    }

    /// `stdout`, then the rows in `spec`'s layout (`%i|%.18T %N`: a `%`,
    /// an optional width, a field letter; anything else as is).
    pub fn render(&self, spec: Option<&str>) -> String {
        let mut out = self.stdout.clone();
        let spec = spec.unwrap_or("%i %T %N");
        for row in &self.rows {
            let mut chars = spec.chars().peekable();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || *c == '.')
                {
                    chars.next();
                }
                if let Some(letter) = chars.next() {
                    out.push_str(row.get(&letter).map(String::as_str).unwrap_or(""));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// The layout a call asks for: `--format=SPEC`, `--format SPEC`, `-oSPEC`
/// or `-o SPEC`.
pub fn format_spec(argv: &[String]) -> Option<String> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--format=") {
            return Some(v.to_string());
        }
        if a == "--format" || a == "-o" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("-o") {
            return Some(v.to_string());
        }
    }
    None
}

/// The script of every fake program, by program name (`DIR/script.json`).
pub type Script = BTreeMap<String, Reply>;

/// One recorded call (`DIR/calls.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Call {
    pub program: String,
    pub argv: Vec<String>,
    pub stdin: String,
    /// `NAME=VALUE` of the environment it was given.
    pub env: Vec<String>,
}

/// Where a kit's files are, from its `bin/` directory.
pub fn script_path(bin: &Path) -> PathBuf {
    bin.parent().unwrap_or(bin).join("script.json")
}

pub fn calls_path(bin: &Path) -> PathBuf {
    bin.parent().unwrap_or(bin).join("calls.jsonl")
}

/// When this process was started as a fake program, runs it and returns
/// its exit code.
pub fn run_if_fake() -> Option<i32> {
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    let bin = argv0.parent()?;
    let me = unsafe { libc::getuid() };
    let private =
        std::fs::metadata(bin).is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o077 == 0);
    if !private || !bin.join(MARKER).is_file() {
        return None;
    }
    let program = argv0.file_name()?.to_string_lossy().into_owned();
    Some(fake(bin, &program))
}

fn fake(bin: &Path, program: &str) -> i32 {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let call = Call {
        program: program.to_string(),
        argv: std::env::args().skip(1).collect(),
        stdin: String::from_utf8_lossy(&stdin).into_owned(),
        env: std::env::vars().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(calls_path(bin))
    {
        let _ = writeln!(f, "{}", serde_json::to_string(&call).unwrap_or_default());
    }
    let script: Script = std::fs::read(script_path(bin))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let reply = script.get(program).cloned().unwrap_or(Reply {
        stderr: format!("{program}: not scripted by the conformance kit\n"),
        code: 127,
        ..Default::default()
    });
    let out = if reply.rows.is_empty() {
        reply.stdout.clone()
    } else {
        reply.render(format_spec(&call.argv).as_deref())
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    let _ = std::io::stderr().write_all(reply.stderr.as_bytes());
    reply.code
}

/// A kit's fake `bin/`: created private, marked, one link per program to
/// this executable.
pub fn make_bin(dir: &Path, programs: &[&str]) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(bin.join(MARKER), b"")?;
    let exe = std::env::current_exe().context("cannot find the wasmspawner executable")?;
    for p in programs {
        let link = bin.join(p);
        if !link.exists() {
            std::os::unix::fs::symlink(&exe, &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    Ok(bin)
}

/// Scripts the fake programs and forgets earlier calls.
pub fn set_script(bin: &Path, script: &Script) -> anyhow::Result<()> {
    std::fs::write(script_path(bin), serde_json::to_vec(script)?)?;
    let _ = std::fs::remove_file(calls_path(bin));
    Ok(())
}

/// The calls recorded since the last [`set_script`].
pub fn calls(bin: &Path) -> Vec<Call> {
    std::fs::read_to_string(calls_path(bin))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
