//! Stamps the binary with the git commit it was built from and the build date, for
//! `validator --version` and the `validator_build_info` metric. Outside a git checkout (a
//! source archive, an image built without `.git`), `VALIDATOR_GIT_COMMIT` may name the commit;
//! otherwise it reads `unknown`. `SOURCE_DATE_EPOCH` fixes the date for reproducible builds.

use std::process::Command;

fn main() {
    let commit = std::env::var("VALIDATOR_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => output("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"]),
        Err(_) => output("date", &["-u", "+%Y-%m-%d"]),
    }
    .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VALIDATOR_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=VALIDATOR_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=VALIDATOR_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    if let Some(git_dir) = output("git", &["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(head) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head}");
        }
        println!("cargo:rerun-if-changed={git_dir}/packed-refs");
    }
}

/// The trimmed standard output of a command that succeeded.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
