use clap::Parser;
use faas_agent::config::{Config, Flags};
use faas_agent::extract_jail;

fn main() -> anyhow::Result<()> {
    // The agent's own package-extraction child (see extract_jail.rs): no
    // runtime, no logging set-up, no flags.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == extract_jail::SUBCOMMAND)
    {
        std::process::exit(extract_jail::child_main());
    }
    faas_telemetry::init_logging();
    let config = Config::resolve(Flags::parse())?;
    tokio::runtime::Runtime::new()?.block_on(faas_agent::run(config))
}
