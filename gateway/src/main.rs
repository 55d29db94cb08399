use clap::Parser;
use faas_gateway::config::{Config, Flags};

fn main() -> anyhow::Result<()> {
    faas_telemetry::init_logging();
    let config = Config::resolve(Flags::parse())?;
    // One thread: a request never changes threads between the HTTP
    // connection and the gRPC channel (each hand-over is a wake-up that
    // waits for a CPU on a busy machine).
    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(faas_gateway::run(config))
}
