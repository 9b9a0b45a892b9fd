use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMSPAWNER_LOG")
                .unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into()),
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
