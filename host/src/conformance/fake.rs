//! The scripted fake scheduler programs of the conformance kit: the
//! `wasmspawner` binary itself, linked under a scheduler program's name
//! (`sbatch`, `squeue`, …) into a kit's private `bin/` directory. Run that
//! way it records its call and prints what the kit scripted — no shell, no
//! real scheduler.
//!
//! A directory is a fake `bin/` only when it holds [`MARKER`] and is
//! private to the user (0700, owned by them); anything else runs the
//! normal command line.
//!
//! Every call of a program gets the same scripted [`Reply`]; with
//! [`Reply::only_asked`] each call prints only the jobs it names, so a
//! plugin that splits many jobs over several commands gets each one's
//! own answer (the status bench in `host/benches/plugin_calls.rs`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file that marks a kit's fake `bin/` directory.
pub const MARKER: &str = ".wasmspawner-conformance-fake";

/// What one fake program does when called: `stdout`, then the `rows`,
/// then the `records`, then `tail` (and `stderr`, exit `code`).
///
/// With `only_asked`, rows and records not named by the call are left out,
/// so one script answers a plugin that splits many jobs over several
/// commands, each command for its own jobs only: a row is named by its
/// `%i` field, a record by its `key`, when that is a word of the call's
/// argv (an argument, a `,`-separated part of one, or of what follows its
/// first `=`: `--jobs=1,2` names `1` and `2`). The key is what the
/// scheduler's command names: the job id, or (Grid Engine, asked by owner)
/// the job's owner.
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
    /// Text printed after the rows, one record per job (a `qstat -f`
    /// block, an XML element, a line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// Printed last (an XML listing's closing tags).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tail: String,
    /// Only the rows and records the call names (see above).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_asked: bool,
}

/// One job's part of a listing, and the word a call names to get it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub key: String,
    pub text: String,
}

impl Record {
    pub fn new(key: &str, text: String) -> Record {
        Record {
            key: key.to_string(),
            text,
        }
    }
}

impl Reply {
    /// `stdout`, exit 0.
    pub fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            ..Default::default()
        }
    }

    /// The same answer `n` times over (to go past the output cap): the
    /// text (`stdout`, records, `tail`) repeated into `stdout`, the rows
    /// repeated after it.
    pub fn repeat(&self, n: usize) -> Reply {
        let text: String = std::iter::once(self.stdout.as_str())
            .chain(self.records.iter().map(|r| r.text.as_str()))
            .chain([self.tail.as_str()])
            .collect();
        Reply {
            stdout: text.repeat(n),
            rows: std::iter::repeat_n(self.rows.clone(), n)
                .flatten()
                .collect(),
            records: Vec::new(),
            tail: String::new(),
            ..self.clone()
        }
    }

    /// `stdout`, then the rows in `spec`'s layout (`%i|%.18T %N`: a `%`,
    /// an optional width, a field letter; anything else as is), then the
    /// records and `tail`: everything, whatever `only_asked` says.
    pub fn render(&self, spec: Option<&str>) -> String {
        self.render_if(spec, |_| true)
    }

    /// What the fake prints for a call with this argv: [`Reply::render`]
    /// in the layout it asks for, only what it names when `only_asked`.
    pub fn answer(&self, argv: &[String]) -> String {
        let named = asked(argv);
        self.render_if(format_spec(argv).as_deref(), |id| {
            !self.only_asked || named.contains(id)
        })
    }

    fn render_if(&self, spec: Option<&str>, keep: impl Fn(&str) -> bool) -> String {
        let mut out = self.stdout.clone();
        let spec = spec.unwrap_or("%i %T %N");
        let rows = self
            .rows
            .iter()
            .filter(|r| keep(r.get(&'i').map(String::as_str).unwrap_or("")));
        for row in rows {
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
        for r in self.records.iter().filter(|r| keep(&r.key)) {
            out.push_str(&r.text);
        }
        out.push_str(&self.tail);
        out
    }
}

/// The words of a call's argv that can name a job: each argument, its
/// `,`-separated parts, and those of what follows its first `=`.
pub fn asked(argv: &[String]) -> std::collections::BTreeSet<&str> {
    let mut words = std::collections::BTreeSet::new();
    for a in argv {
        words.insert(a.as_str());
        words.extend(a.split(','));
        if let Some((_, v)) = a.split_once('=') {
            words.extend(v.split(','));
        }
    }
    words
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
    let out = reply.answer(&call.argv);
    let _ = std::io::stdout().write_all(out.as_bytes());
    let _ = std::io::stderr().write_all(reply.stderr.as_bytes());
    reply.code
}

/// A kit's fake `bin/`: created private, marked, one link per program to
/// `exe` (default: this executable; it must be `wasmspawner`, or call
/// [`run_if_fake`] first as its `main` does).
pub fn make_bin(dir: &Path, programs: &[&str], exe: Option<&Path>) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(bin.join(MARKER), b"")?;
    let exe = match exe {
        Some(e) => e.to_path_buf(),
        None => std::env::current_exe().context("cannot find the wasmspawner executable")?,
    };
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

#[cfg(test)]
mod tests {
    use crate::conformance::profiles;
    use crate::model::Job;

    fn jobs(p: &profiles::Profile, ns: &[&str]) -> Vec<Job> {
        ns.iter()
            .map(|n| Job {
                job_id: (p.job_id)(n),
                user: format!("u{n}"),
                state: String::new(),
            })
            .collect()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_asked_keeps_the_rows_and_records_a_call_names() {
        let slurm = profiles::by_name("slurm").unwrap();
        let mut r = (slurm.running)(&jobs(slurm, &["1", "2", "3"]));
        let call = argv(&["--noheader", "--jobs=1,3", "--format=%i|%T"]);
        assert_eq!(r.answer(&call), "1|RUNNING\n2|RUNNING\n3|RUNNING\n");
        r.only_asked = true;
        assert_eq!(r.answer(&call), "1|RUNNING\n3|RUNNING\n");
        assert_eq!(r.render(Some("%i")), "1\n2\n3\n", "render is everything");

        // Records by job id, inside the listing's head and tail.
        let torque = profiles::by_name("torque").unwrap();
        let mut r = (torque.running)(&jobs(torque, &["1", "2"]));
        r.only_asked = true;
        let out = r.answer(&argv(&["-x", "2.torque01"]));
        assert!(out.starts_with("<Data><Job><Job_Id>2.torque01<"), "{out}");
        assert!(out.ends_with("</Job></Data>\n") && !out.contains(">1.torque01<"));
        assert_eq!(r.answer(&argv(&["-x"])), "<Data></Data>\n");

        // Grid Engine names owners, not jobs.
        let ge = profiles::by_name("gridengine").unwrap();
        let mut r = (ge.running)(&jobs(ge, &["1", "2", "3"]));
        r.only_asked = true;
        let out = r.answer(&argv(&["-xml", "-r", "-u", "u1,u3"]));
        assert_eq!(out.matches("<job_list").count(), 2, "{out}");
        assert!(!out.contains("<JB_owner>u2<"));
    }
}
