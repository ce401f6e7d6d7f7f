//! The `validator` binary. For now it has one subcommand, `demo`, which runs the real engine on
//! in-memory fakes of the chain, the executors and the ML node.

mod demo;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let result = match command.as_str() {
        "demo" => demo::Options::parse(rest).and_then(|options| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(demo::run(options))
        }),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(anyhow::anyhow!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(64)
        }
    }
}

const USAGE: &str = "usage: validator demo [--backlog N] [--slots K] [--ml-latency-ms MS] [--live-rate PER_SEC] [--json]";
