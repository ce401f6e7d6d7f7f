//! [`TempPostgres`]: a PostgreSQL server for tests, on loopback. It is the one
//! `VALIDATOR_TEST_POSTGRES_URL` names (`.ci/run` starts one), or else a throwaway server this
//! process starts from the installed PostgreSQL binaries (Debian's `postgresql` package) in a
//! fresh temporary directory, stopped and removed on drop. Each test takes its own database.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// How long a fresh server may take to accept connections.
const READY_BOUND: Duration = Duration::from_secs(30);

/// A PostgreSQL server for tests. See the module docs.
pub struct TempPostgres {
    url: String,
    server: Option<Server>,
}

/// A server this process started.
struct Server {
    root: bool,
    pg_ctl: PathBuf,
    data: PathBuf,
    dir: PathBuf,
}

impl TempPostgres {
    /// The server `VALIDATOR_TEST_POSTGRES_URL` names, or a new one on a free loopback port.
    ///
    /// # Panics
    /// When no server is named and no PostgreSQL binaries are installed, or the new server does
    /// not come up: the message says how to install PostgreSQL, or quotes the server's log.
    pub fn start() -> Self {
        match std::env::var("VALIDATOR_TEST_POSTGRES_URL") {
            Ok(url) => Self { url, server: None },
            Err(_) => Self::spawn(false),
        }
    }

    /// A new server on a free loopback port that syncs its commits to disk as a production
    /// server does (`fsync` and `synchronous_commit` on), for measurements.
    ///
    /// # Panics
    /// As [`TempPostgres::start`].
    pub fn start_durable() -> Self {
        Self::spawn(true)
    }

    #[allow(clippy::expect_used, clippy::unwrap_used)]
    fn spawn(durable: bool) -> Self {
        let bin = binaries().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries are not installed: install Debian's postgresql \
                 package (scripts/postgres does it: apt-get install -y postgresql), or set \
                 VALIDATOR_TEST_POSTGRES_URL to a server these tests may create databases in"
            )
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "validator-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the server's directory");
        let root = is_root();
        if root {
            // PostgreSQL refuses to run as root: the server runs as the package's user.
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&dir)
                .status()
                .expect("running chown");
            assert!(status.success(), "chown postgres {} failed", dir.display());
        }
        let data = dir.join("data");
        let initdb = owner_command(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("running initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let sync = if durable { "on" } else { "off" };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync={sync} \
             -c synchronous_commit={sync} -c max_connections=300",
            dir.display()
        );
        // `pg_ctl -w` returns once the server accepts connections.
        let started = owner_command(root, &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", &READY_BOUND.as_secs().to_string(), "-o", &options, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("running pg_ctl start");
        if !started.status.success() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("PostgreSQL did not start: {}{log}", String::from_utf8_lossy(&started.stderr));
        }
        let pg_ctl = bin.join("pg_ctl");
        let stop = if root {
            format!("runuser -u postgres -- '{}' -D '{}'", pg_ctl.display(), data.display())
        } else {
            format!("'{}' -D '{}'", pg_ctl.display(), data.display())
        };
        // Tests keep the server in a static, which is never dropped: a watchdog stops it and
        // removes its directory once this process is gone, however it ends. It outlives this
        // process by design, so nothing here waits for it.
        let watchdog = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; {stop} -m immediate stop; \
             rm -rf '{dir}'",
            parent = std::process::id(),
            dir = dir.display(),
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the server's watchdog");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Self { url, server: Some(Server { root, pg_ctl, data, dir }) }
    }

    /// The server's URL (its `postgres` database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates a database named `name` (dropping one left by an earlier run) and returns its
    /// URL.
    ///
    /// # Panics
    /// When the server refuses; tests have nothing to do without it.
    #[allow(clippy::expect_used)]
    pub async fn create_database(&self, name: &str) -> String {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", self.url));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .expect("dropping an old test database");
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("creating the test database");
        let base = self.url.rsplit_once('/').map_or(self.url.as_str(), |(base, _)| base);
        format!("{base}/{name}")
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = owner_command(server.root, &server.pg_ctl)
                .arg("-D")
                .arg(&server.data)
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&server.dir);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program`, run as the `postgres` user when this process is root (directly, so a signal to
/// the child reaches the server itself).
fn owner_command(root: bool, program: &Path) -> Command {
    let mut command = Command::new(program);
    if root {
        use std::os::unix::process::CommandExt as _;
        let (uid, gid) = postgres_user();
        command.uid(uid).gid(gid);
    }
    command
}

/// The `postgres` user's uid and gid.
#[allow(clippy::expect_used)]
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("a C string");
    // SAFETY: getpwnam reads a NUL-terminated name; the record is copied out at once, before
    // any other call that could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "the postgres user does not exist: install Debian's postgresql");
    // SAFETY: checked non-null above; the fields are plain integers.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// The directory of `initdb` and `postgres`: on `PATH`, else the newest under
/// `/usr/lib/postgresql`.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()));
    if let Some(dir) = on_path {
        let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
        return real.parent().map(Path::to_owned);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
