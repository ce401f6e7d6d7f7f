//! The `validator-demo` binary: the whole validator on loopback fakes, in one command.

use std::process::ExitCode;

use clap::Parser;
use validator_bin::{settings::LogFormat, telemetry};
use validator_demo::DemoOptions;

/// Runs the validator node against loopback fakes of a chain node, an executor and an ML node.
#[derive(Debug, Parser)]
#[command(name = "validator-demo", version)]
struct Cli {
    /// Log format; `RUST_LOG` sets the filter (default `warn`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    options: DemoOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logs(cli.log_format.unwrap_or(LogFormat::Pretty), "warn");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(validator_demo::run(cli.options)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
