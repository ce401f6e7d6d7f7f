//! The `validator` binary: `run`, `check-config` and `score`.

use anyhow::Context as _;
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing::info;
use validator_bin::{
    app,
    settings::{LogFormat, Settings},
    signal, telemetry, EXIT_LOCKED, EXIT_USAGE,
};

/// A validator node for a decentralized AI inference network.
#[derive(Debug, Parser)]
#[command(name = "validator", version)]
struct Cli {
    /// Log format; `RUST_LOG` sets the filter.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the merged configuration (defaults, file, environment) as TOML.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Scores two chat-completion JSON files and prints one JSON line.
    Score {
        /// The executor's response.
        original: PathBuf,
        /// Our ML node's response.
        validation: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score { original, validation } => {
            validator_bin::score::score_files(&original, &validation).map(|line| println!("{line}"))
        }
        Command::CheckConfig { config } => match Settings::load(config.as_deref()) {
            Ok(settings) => settings.to_toml().map(|text| print!("{text}")),
            Err(err) => return usage(err),
        },
        Command::Run { config } => {
            let settings = match Settings::load(Some(&config))
                .and_then(|s| s.validate_for_run().map(|()| s))
            {
                Ok(settings) => settings,
                Err(err) => return usage(err),
            };
            telemetry::init_logs(
                cli.log_format.unwrap_or(settings.log.format),
                &settings.log.filter,
            );
            runtime().and_then(|rt| rt.block_on(run(settings)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err.downcast_ref::<journal::Error>() {
                Some(journal::Error::Locked { .. }) => ExitCode::from(EXIT_LOCKED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let identity = app::Identity::load(&settings.identity)?;
    if let Some(path) = &settings.storage.password_file {
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("reading storage.password_file {}", path.display()))?;
        settings.storage.password = Some(password.trim_end_matches(['\n', '\r']).to_owned());
    }
    let app = app::App::build(settings, identity).await?;
    let handle = app.handle();
    println!("admin token: {} (kept in {})", handle.token, handle.token_file.display());
    info!(admin = %handle.admin_addr, metrics = %handle.metrics_addr, "listening");
    let stopped = app.run(signal::shutdown()).await?;
    info!(reason = %stopped.reason, drained = stopped.engine.drained, "exiting");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn usage(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(EXIT_USAGE)
}
