use std::process::Command;

use serde_json::Value;

#[test]
fn scores_the_recorded_fixtures() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/ml-node");
    let output = Command::new(crate::binary())
        .arg("score")
        .arg(fixtures.join("inference_response_int4.json"))
        .arg(fixtures.join("validation_response_fp8.json"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(line["verdict"], "similarity");
    assert_eq!(line["value"].as_f64().unwrap(), 0.9668894246685018);
    assert!(stdout.contains("0.9668894246685018"), "{stdout}");
    assert!(line["value_decimal"]["value"].is_i64());
    assert!(line["value_decimal"]["exponent"].is_i64());
}

#[test]
fn a_missing_file_is_an_error() {
    let output = Command::new(crate::binary())
        .args(["score", "/nonexistent/a.json", "/nonexistent/b.json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/a.json"));
}
