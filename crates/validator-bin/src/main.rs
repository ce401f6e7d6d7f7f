//! The `validator` binary: `run`, `check-config`, `keys` and `score`.

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing::{info, warn};
use validator_bin::{
    app,
    guard::GuardError,
    keys::{self, KeySource},
    settings::{LogFormat, Settings},
    signal, telemetry, EXIT_INVALID_VERDICT, EXIT_LOCKED, EXIT_OTHER_SIGNER, EXIT_USAGE, VERSION,
};

/// A validator node for a decentralized AI inference network.
#[derive(Debug, Parser)]
#[command(name = "validator", version = VERSION)]
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
        /// Follow, sample, fetch, replay and score, but broadcast nothing: verdicts go to the
        /// journal, the logs and `validator_dry_run_messages_total` (the `dry_run` setting).
        #[arg(long)]
        dry_run: bool,
    },
    /// Runs every check `run` runs before it binds anything (settings, key files and their
    /// addresses, TLS files, the database password file), then prints the merged configuration
    /// (defaults, file, environment) as TOML. Exits 64 on the first failure.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Key files: import a secret, show a key's address.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Scores two chat-completion JSON files and prints one JSON line; either may be `-`
    /// (standard input). Exits 3 when the verdict is `invalid`.
    Score {
        /// The executor's response.
        original: PathBuf,
        /// Our ML node's response.
        validation: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Reads a secret from standard input (64 hex digits, or a BIP-39 mnemonic derived on
    /// m/44'/118'/0'/0/0) and writes it to a new key file, mode 0600; prints its address.
    Import {
        /// What standard input holds.
        #[arg(long, value_enum)]
        from: KeySource,
        /// The key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// A file holding the mnemonic's BIP-39 passphrase, if it has one.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The bech32 prefix of the address printed.
        #[arg(long, default_value = "gonka")]
        prefix: String,
    },
    /// Prints a key file's address and compressed public key as one JSON line.
    Show {
        /// The key file.
        key_file: PathBuf,
        /// The bech32 prefix of the address.
        #[arg(long, default_value = "gonka")]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score { original, validation } => {
            match validator_bin::score::score_files(&original, &validation) {
                Ok(line) => {
                    println!("{line}");
                    if validator_bin::score::is_invalid(&line) {
                        return ExitCode::from(EXIT_INVALID_VERDICT);
                    }
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        Command::Keys(command) => match keys_command(command) {
            Ok(line) => {
                println!("{line}");
                return ExitCode::SUCCESS;
            }
            Err(err) => return usage(format!("{err:#}")),
        },
        Command::CheckConfig { config } => match preflight(config.as_deref()) {
            Ok((settings, _)) => settings.to_toml().map(|text| print!("{text}")),
            Err(err) => return usage(err),
        },
        Command::Run { config, dry_run } => {
            let (mut settings, identity) = match preflight(Some(&config)) {
                Ok(checked) => checked,
                Err(err) => return usage(err),
            };
            settings.dry_run |= dry_run;
            if let Err(err) = settings.validate() {
                return usage(err);
            }
            telemetry::init_logs(
                cli.log_format.unwrap_or(settings.log.format),
                &settings.log.filter,
            );
            runtime().and_then(|rt| rt.block_on(run(settings, identity)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(journal::Error::Locked { .. }) = err.downcast_ref::<journal::Error>() {
                return ExitCode::from(EXIT_LOCKED);
            }
            match err.downcast_ref::<GuardError>() {
                Some(GuardError::OtherSigner { .. }) => ExitCode::from(EXIT_OTHER_SIGNER),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Everything `run` checks before it opens, binds or connects anything: the settings (each
/// crate's validation), the identity (key files, their modes and addresses), the database
/// password file. Environment variables under the prefix that name no setting are named in a
/// warning on stderr.
fn preflight(config: Option<&std::path::Path>) -> Result<(Settings, app::Identity), String> {
    let mut settings = Settings::load(config).map_err(|err| err.to_string())?;
    for name in Settings::ignored_environment() {
        eprintln!("warning: {name} is under the VALIDATOR_ prefix but names no setting: ignored");
    }
    settings.validate_for_run().map_err(|err| err.to_string())?;
    let identity = app::Identity::load(&settings.identity, &settings.chain.tx.address_prefix)
        .map_err(|err| format!("{err:#}"))?;
    if let Some(path) = &settings.storage.password_file {
        let password = std::fs::read_to_string(path)
            .map_err(|err| format!("storage.password_file: reading {}: {err}", path.display()))?;
        settings.storage.password = Some(password.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok((settings, identity))
}

fn keys_command(command: KeysCommand) -> anyhow::Result<serde_json::Value> {
    match command {
        KeysCommand::Import { from, out, passphrase_file, prefix } => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            keys::import(from, &input, passphrase_file.as_ref(), &out, &prefix)
        }
        KeysCommand::Show { key_file, prefix } => keys::show(&key_file, &prefix),
    }
}

async fn run(settings: Settings, identity: app::Identity) -> anyhow::Result<()> {
    let app = app::App::build(settings, identity).await?;
    let handle = app.handle();
    if handle.token_created {
        println!("admin token: {} (kept in {})", handle.token, handle.token_file.display());
    }
    info!(token_file = %handle.token_file.display(), created = handle.token_created, "admin token");
    info!(admin = %handle.admin_addr, metrics = %handle.metrics_addr, version = VERSION, "listening");
    let stopped = app.run(signal::shutdown()).await?;
    if !stopped.engine.drained {
        warn!("the engine did not drain within shutdown_grace");
    }
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
