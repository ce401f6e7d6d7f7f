//! Integration tests of the `validator` binary and its app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The admin API and metrics of an app running on loopback fakes, in process.
mod admin;
// The bad-input table: malformed input through every entry point, typed answers, still serving.
mod bad_input;
// `validator keys`: import from a mnemonic or hex, show; `--version`.
mod keys;
// The journal: SIGKILL at any point never sends a validation twice; one process per data
// directory; a newer schema is refused.
mod journal;
// Configuration loading and its exit codes, through the built binary; the CA file is checked.
mod config;
// `validator run` as a process on the loopback fakes: it follows the chain, recovers, claims
// and stops on SIGTERM.
mod process;
// The gRPC validation service: token, statuses, joins.
mod service;
// `validator score` on the recorded vLLM fixtures.
mod score;
// The recovery triggers: the claim trigger, the reward check, the admin claim.
mod triggers;

use std::path::PathBuf;

use tokio::sync::oneshot;
use validator_bin::{app::AppHandle, settings::Settings};
use validator_demo::{DemoOptions, Scenario};

/// The built binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_validator"))
}

pub use testkit::process::temp_path;

/// A reqwest client: the workspace's reqwest needs its TLS configuration handed in.
pub fn http_client() -> reqwest::Client {
    testkit::public_tls().http_client_builder().build().unwrap()
}

/// Writes a `validator run` configuration for `scenario` with its state in `data_dir` and the
/// admin API on `admin_port` (0 picks one); returns the file's path.
pub fn run_config(
    scenario: &validator_demo::Scenario,
    options: &validator_demo::DemoOptions,
    data_dir: &std::path::Path,
    admin_port: u16,
) -> PathBuf {
    let mut settings = scenario.settings(options);
    let key_file = data_dir.with_file_name("validator.key");
    let _ = std::fs::remove_file(&key_file);
    validator_bin::keys::write_key_file(&key_file, &[0x11; 32]).unwrap();
    settings.data_dir = data_dir.to_owned();
    settings.admin.token_file = None;
    settings.admin.listen.set_port(admin_port);
    settings.identity.account_address = scenario.address.clone();
    settings.identity.key_file = key_file;
    let config = data_dir.with_file_name("validator.toml");
    std::fs::write(&config, toml::to_string(&settings).unwrap()).unwrap();
    config
}

/// The app on the demo's loopback fakes, running in this process until [`Running::stop`].
pub struct Running {
    /// The fakes.
    pub scenario: Scenario,
    /// The running app.
    pub app: AppHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the fakes of `options`, lets `prepare` script them and adjust the settings, then
    /// builds the app and runs it.
    pub async fn start(
        options: &DemoOptions,
        prepare: impl FnOnce(&Scenario, &mut Settings),
    ) -> Self {
        let (scenario, app) = Scenario::build_with(options, prepare).await.unwrap();
        let handle = app.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self { scenario, app: handle, stop, task }
    }

    /// Stops the app as a signal would and waits for it.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}
