use std::{
    path::PathBuf,
    process::{Command, Output},
};

use chain_source::Signer;
use validator_bin::keys;

/// `check-config` on `toml` with a good `[identity]` appended.
fn check_config(toml: &str) -> Output {
    check_config_as_is(&format!("{toml}\n{}", identity(&key_file(0o600))))
}

/// `check-config` on `toml` alone.
fn check_config_as_is(toml: &str) -> Output {
    let path = crate::temp_path("validator.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(crate::binary()).arg("check-config").arg("--config").arg(&path).output().unwrap()
}

/// A key file of the secret 0x11.., with `mode`.
fn key_file(mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = crate::temp_path("account.key");
    keys::write_key_file(&path, &[0x11; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The address of the secret 0x11...
fn address() -> String {
    keys::address(&Signer::from_bytes(&[0x11; 32]).unwrap(), "gonka").unwrap()
}

/// An `[identity]` section for the account of 0x11.. with its key in `key_file`.
fn identity(key_file: &std::path::Path) -> String {
    format!(
        "[identity]\naccount_address = \"{}\"\nkey_file = \"{}\"\n",
        address(),
        key_file.display()
    )
}

/// Asserts `output` exited 64 with every needle in its stderr.
fn refused(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn check_config_checks_the_key_files_and_the_address() {
    let readable = key_file(0o644);
    refused(
        &check_config_as_is(&identity(&readable)),
        &["readable by group or others", "chmod 600"],
    );
    let short = crate::temp_path("short.key");
    keys::write_key_file(&short, &[0x11; 32]).unwrap();
    std::fs::write(&short, "11".repeat(31)).unwrap();
    refused(&check_config_as_is(&identity(&short)), &["64 hex digits", "has 62 characters"]);
    let other = format!(
        "[identity]\naccount_address = \"gonka1other\"\nkey_file = \"{}\"\n",
        key_file(0o600).display()
    );
    refused(&check_config_as_is(&other), &[&address(), "gonka1other", "identity.account_address"]);
    refused(
        &check_config_as_is(&format!("[identity]\naccount_address = \"{}\"\n", address())),
        &["identity.key_file"],
    );
    // A warm key signs: the account's cold key stays off the server.
    let warm = format!(
        "[identity]\naccount_address = \"{}\"\nwarm_key_file = \"{}\"\n",
        address(),
        key_file(0o600).display()
    );
    let output = check_config_as_is(&warm);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn check_config_refuses_what_run_would_refuse_later() {
    refused(
        &check_config("[chain.events]\nrpc_url = \"tcp://127.0.0.1:26657\"\n"),
        &["events.rpc_url", "http or https"],
    );
    refused(&check_config("[core]\nslots = 100000000000\n"), &["`slots`", "1 to 100000"]);
    refused(&check_config("[core]\nlive_capacity = 100000000000\n"), &["live_capacity"]);
}

#[test]
fn run_refuses_a_bad_rpc_url_before_binding_or_printing_a_token() {
    let path = crate::temp_path("validator.toml");
    let data_dir = path.with_file_name("data");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[chain.events]\nrpc_url = \"tcp://127.0.0.1:26657\"\n{}",
            data_dir.display(),
            identity(&key_file(0o600))
        ),
    )
    .unwrap();
    let output =
        Command::new(crate::binary()).arg("run").arg("--config").arg(&path).output().unwrap();
    refused(&output, &["events.rpc_url"]);
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(!data_dir.exists(), "nothing was created");
}

#[test]
fn unknown_variables_under_the_prefix_are_named_not_fatal() {
    let path = crate::temp_path("validator.toml");
    std::fs::write(&path, identity(&key_file(0o600))).unwrap();
    let run = |name: &str, value: &str| {
        Command::new(crate::binary())
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .env(name, value)
            .output()
            .unwrap()
    };
    // What a Kubernetes Service named `validator` injects.
    let output = run("VALIDATOR_PORT", "tcp://10.0.0.1:8080");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("VALIDATOR_PORT") && stderr.contains("ignored"), "{stderr}");
    // A typo under a known section still stops the node.
    refused(&run("VALIDATOR_CORE__SLOTZ", "3"), &["slotz"]);
}

#[test]
fn typos_exit_64_naming_the_key() {
    for (toml, needle) in [
        ("[core]\nslotz = 3\n", "slotz"),
        ("[core]\nslots = -3\n", "core.slots"),
        ("[core]\nreplay_timeout = \"5 minutes\"\n", "core.replay_timeout"),
        ("[core]\nslots = 0\n", "slots"),
        ("[admin]\nlisten = \"nowhere\"\n", "admin.listen"),
    ] {
        refused(&check_config(toml), &[needle]);
    }
}

#[test]
fn check_config_reads_the_ca_file_and_names_a_bad_one() {
    let missing = crate::temp_path("missing.pem");
    let garbage = crate::temp_path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (path, why) in [(&missing, "cannot be read"), (&garbage, "no PEM certificate")] {
        let output = check_config(&format!("[tls]\nca_file = \"{}\"\n", path.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("tls.ca_file"), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()) && stderr.contains(why), "{stderr}");
    }
    let good = crate::temp_path("ca.pem");
    std::fs::write(&good, testkit::TestCa::new().pem()).unwrap();
    let output = check_config(&format!("[tls]\nca_file = \"{}\"\n", good.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&good.display().to_string()));
}

#[test]
fn run_checks_the_config_before_binding() {
    let path = crate::temp_path("validator.toml");
    std::fs::write(&path, "[ml]\nrequest_timeout = -1\n").unwrap();
    let output =
        Command::new(crate::binary()).arg("run").arg("--config").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ml.request_timeout"));
}

#[test]
fn the_environment_overrides_the_file_and_the_output_parses_back() {
    let path = crate::temp_path("validator.toml");
    std::fs::write(
        &path,
        format!(
            "[core]\nslots = 4\n[metrics]\nlisten = \"127.0.0.1:9999\"\n{}",
            identity(&key_file(0o600))
        ),
    )
    .unwrap();
    let output = Command::new(crate::binary())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("VALIDATOR_CORE__SLOTS", "12")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let settings = validator_bin::settings::Settings::from_toml(&text).unwrap();
    assert_eq!(settings.core.slots, 12);
    assert_eq!(settings.metrics.listen.port(), 9999);
}

#[test]
fn the_readme_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a toml block in the README") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let settings = validator_bin::settings::Settings::from_toml(&readme[start..end]).unwrap();
    assert_eq!(settings.ml.nodes.len(), 1);
}

#[test]
fn the_example_configuration_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/validator.toml");
    let output = Command::new(crate::binary())
        .args(["check-config", "--config", example])
        .env("VALIDATOR_IDENTITY__ACCOUNT_ADDRESS", address())
        .env("VALIDATOR_IDENTITY__WARM_KEY_FILE", key_file(0o600))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let settings = validator_bin::settings::Settings::from_toml(&text).unwrap();
    assert_eq!(settings.admin.listen.port(), 9210, "clear of the API node's 9200");
    // As shipped, the example names a warm key file the checkout does not have.
    let output =
        Command::new(crate::binary()).args(["check-config", "--config", example]).output().unwrap();
    refused(&output, &["/etc/validator/warm.key"]);
}
