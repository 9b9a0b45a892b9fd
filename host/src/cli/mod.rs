//! The `wasmspawner` command line: `serve`, `check`, `audit`, `plugin` (one
//! plugin export called with real capabilities, result as JSON on stdout)
//! and `conformance` (the standard scenarios against a component).

mod audit;
mod check;
mod check_connect;
mod plugin_cmd;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wasmspawner",
    version,
    about = "Runs JupyterHub single-user servers as batch jobs through WebAssembly plugins."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the host: load the plugins, watch them for changes, serve the HTTP API.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load every plugin; report declared vs granted capabilities and config
    /// errors; connect to each submit host and tunnel gateway (host key,
    /// login, granted programs there). Exits 1 when anything needs fixing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also connect for instances with only `grants.ssh` hosts (instances
        /// with a submit host or a tunnel are connected to by default).
        #[arg(long, conflicts_with = "no_connect")]
        connect: bool,
        /// Make no SSH connection (e.g. on a machine that cannot reach the cluster).
        #[arg(long)]
        no_connect: bool,
        /// The hub user put for `{user}` in `ssh.user` when connecting.
        #[arg(long, value_name = "HUB_USER")]
        connect_as: Option<String>,
    },
    /// For a security reviewer: what each plugin instance may do (component,
    /// digest, pin, declared, granted, effective, run-as, limits).
    Audit {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Call one plugin export with real capabilities and print the result as JSON.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run the standard scenarios against a plugin component, with scripted
    /// fake scheduler programs; print a table; exit 1 on any failure.
    Conformance {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The scheduler profile (slurm, pbs, torque, gridengine, lsf,
        /// htcondor, moab); default: from the plugin's name and programs.
        #[arg(long)]
        scheduler: Option<String>,
        /// A TOML file with the instance's site config (the
        /// `[instances.X.config]` table).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A group of the test user `alice` (repeatable), for site rules
        /// that depend on groups.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Keep compiled components in DIR between runs (default: compile
        /// afresh in the run's temporary directory).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// Options every `plugin` subcommand takes.
#[derive(Args, Clone)]
pub struct Target {
    /// The host config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The plugin instance (a key under [instances] in the config).
    #[arg(long, short)]
    pub plugin: String,
}

/// The user a call is made for.
#[derive(Args, Clone)]
pub struct UserArgs {
    /// The hub user name.
    #[arg(long, default_value = "jovyan")]
    pub user: String,
    /// A group of the user (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The user is a hub admin.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Print the options form for a user.
    Form {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        user: UserArgs,
    },
    /// Check options (`--option field=value`, repeatable) as the host would.
    /// Prints the typed options, or {"errors": [...]} and exits 2.
    Validate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        user: UserArgs,
        #[arg(long = "option", short = 'o', value_name = "FIELD=VALUE")]
        options: Vec<String>,
    },
    /// Validate options, then submit a job running CMD. Prints {"job_id", "state"}.
    Submit {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        user: UserArgs,
        #[arg(long = "option", short = 'o', value_name = "FIELD=VALUE")]
        options: Vec<String>,
        /// The spawn id the job is for.
        #[arg(long, default_value = "cli")]
        spawn_id: String,
        /// Where the job reports its port.
        #[arg(long, default_value = "http://127.0.0.1:8765/v1/spawns/cli/ready")]
        callback_url: String,
        /// Pass this variable from the CLI's own environment to the job
        /// (repeatable); values never appear in argv.
        #[arg(long = "env", value_name = "NAME")]
        env: Vec<String>,
        /// The single-user server command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print the state of one or more jobs (one plugin call for all).
    Status {
        #[command(flatten)]
        target: Target,
        /// The user the jobs belong to.
        #[arg(long, default_value = "jovyan")]
        user: String,
        /// The plugin state of a job, as `JOB_ID=STATE` (repeatable).
        #[arg(long = "job-state", value_name = "JOB_ID=STATE")]
        job_states: Vec<String>,
        #[arg(required = true)]
        job_ids: Vec<String>,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "jovyan")]
        user: String,
        /// The job's plugin state.
        #[arg(long = "job-state", default_value = "")]
        job_state: String,
        job_id: String,
    },
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve { config } => serve::run(&config).await.map(|()| 0),
        Command::Check {
            config,
            json,
            connect,
            no_connect,
            connect_as,
        } => {
            let connect = match (connect, no_connect) {
                (_, true) => check::Connect::Never,
                (true, _) => check::Connect::Always,
                _ => check::Connect::Remote,
            };
            check::run(&config, json, connect, connect_as.as_deref()).await
        }
        Command::Audit { config, json } => audit::run(&config, json).await,
        Command::Plugin(cmd) => plugin_cmd::run(cmd).await,
        Command::Conformance {
            plugin,
            scheduler,
            config,
            groups,
            cache_dir,
            json,
        } => {
            let report = crate::conformance::run(&crate::conformance::Options {
                plugin,
                scheduler,
                site_config: config,
                groups,
                cache_dir,
                fake_program: None,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(if report.failed() == 0 { 0 } else { 1 })
        }
    }
}
