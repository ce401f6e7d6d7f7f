//! Integration tests of the `validator` binary and its app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The admin API and metrics of an app running on loopback fakes, in process.
mod admin;
// The bad-input table: malformed input through every entry point, typed answers, still serving.
mod bad_input;
// The journal: SIGKILL at any point never sends a validation twice; one process per data
// directory; the admin history routes.
mod journal;
// Configuration loading and its exit codes, through the built binary.
mod config;
// The demo process: SIGTERM, and an external ML node with hanging replies.
mod process;
// `validator score` on the recorded vLLM fixtures.
mod score;
// The recovery triggers: the claim-time dispatcher, the reward checker, the admin claim.
mod triggers;

use std::path::PathBuf;

use tokio::sync::oneshot;
use validator_bin::{
    app::AppHandle,
    demo::{DemoOptions, Scenario},
    settings::Settings,
};

/// The built binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_validator"))
}

/// A fresh path under the system's temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("validator-it-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Writes a `validator run` configuration for `scenario` with its state in `data_dir` and the
/// admin API on `admin_port` (0 picks one); returns the file's path.
pub fn run_config(
    scenario: &validator_bin::demo::Scenario,
    options: &validator_bin::demo::DemoOptions,
    data_dir: &std::path::Path,
    admin_port: u16,
) -> PathBuf {
    let mut settings = scenario.settings(options);
    let key_file = data_dir.with_file_name("validator.key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
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
