//! Helpers for tests that run a built binary: fresh temporary paths and a bounded wait for a
//! child's exit.

use std::{
    path::PathBuf,
    process::{Child, ExitStatus},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

/// A fresh path named `name` in a new directory under the system's temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("validator-it-{}-{n}", std::process::id()));
    #[allow(clippy::expect_used)]
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir.join(name)
}

/// Waits for `child` to exit, at most `bound`.
///
/// # Panics
/// When the child has not exited within `bound`, or waiting for it fails.
#[allow(clippy::expect_used)]
pub fn wait_exit(mut child: Child, bound: Duration) -> ExitStatus {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    receiver
        .recv_timeout(bound)
        .expect("the process did not exit in time")
        .expect("waiting for the process")
}
