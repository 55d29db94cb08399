//! faasctl: the faas command-line tool. Parsing, packing and formatting
//! live in their modules; this file wires them and turns failures into the
//! documented exit codes.

mod args;
mod client;
mod commands;
mod contexts;
mod format;
mod output;
mod pack;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // One thread is plenty for a CLI that makes one RPC at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            output::note(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(output::EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if is_broken_pipe(&error) {
                // `faasctl call ls | head`: the reader left, nothing is wrong.
                return ExitCode::SUCCESS;
            }
            let (code, message) = output::describe_failure(&error);
            if let Some(message) = message {
                output::note(&message);
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: args::Cli) -> anyhow::Result<()> {
    if let args::Command::Context(cmd) = cli.command {
        return contexts::run(cmd, &cli.global);
    }
    let client = contexts::client(&cli.global)?;
    let context = commands::Context::new(client, cli.global.output);
    commands::run(&context, cli.command).await
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
