use clap::Parser;
use faas_agent::config::{Config, Flags};
use faas_agent::extract_jail;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // The agent's own package-extraction child (see extract_jail.rs): no
    // runtime, no logging set-up, no flags.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == extract_jail::SUBCOMMAND)
    {
        std::process::exit(extract_jail::child_main());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::resolve(Flags::parse())?;
    tokio::runtime::Runtime::new()?.block_on(faas_agent::run(config))
}
