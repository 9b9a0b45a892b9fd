use clap::Parser;

fn main() {
    // Linked under a scheduler program's name into a conformance kit's
    // private bin/: the kit's scripted fake, nothing else.
    if let Some(code) = wasmspawner_host::conformance::fake::run_if_fake() {
        std::process::exit(code);
    }
    // The conformance kit's table is the output; its plugins' warnings
    // about the broken answers it feeds them are expected.
    let quiet = std::env::args().nth(1).as_deref() == Some("conformance");
    let default = if quiet {
        "error,plugin=off"
    } else {
        "info,cranelift=warn,wasmtime=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMSPAWNER_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = wasmspawner_host::cli::Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("start the async runtime");
    let code = match rt.block_on(wasmspawner_host::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Never wait for work still in flight (a plugin call, a compile): the
    // state is on disk, and SIGTERM must end the host within its grace.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
