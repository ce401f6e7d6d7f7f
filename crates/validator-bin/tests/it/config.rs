use std::process::{Command, Output};

fn check_config(toml: &str) -> Output {
    let path = crate::temp_path("validator.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(crate::binary()).arg("check-config").arg("--config").arg(&path).output().unwrap()
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
        let output = check_config(toml);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(needle), "{toml}: {stderr}");
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
    std::fs::write(&path, "[core]\nslots = 4\n[metrics]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
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
