use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

/// BIP-39's all-`abandon` test phrase: public, never to hold funds.
const PHRASE: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                      abandon abandon about";

/// Runs the binary with `args` and `stdin` on its standard input.
fn validator(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(crate::binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn line(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_mnemonic_becomes_a_key_file_of_the_account_wallets_derive() {
    let out = crate::temp_path("account.key");
    let out_arg = out.to_str().unwrap();
    let imported =
        line(&validator(&["keys", "import", "--from", "mnemonic", "--out", out_arg], PHRASE));
    let address = imported["address"].as_str().unwrap();
    assert!(address.starts_with("gonka1"), "{imported}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let shown = line(&validator(&["keys", "show", out_arg, "--prefix", "cosmos"], ""));
    assert_eq!(shown["address"], "cosmos19rl4cm2hmr8afy4kldpxz3fka4jguq0auqdal4");
    assert_eq!(shown["public_key"], imported["public_key"]);
    // The secret in the file is what a hex export of the same account holds.
    let hex = std::fs::read_to_string(&out).unwrap();
    let again = crate::temp_path("again.key");
    let from_hex = line(&validator(
        &["keys", "import", "--from", "hex", "--out", again.to_str().unwrap()],
        &hex,
    ));
    assert_eq!(from_hex, imported);
    // Never overwritten.
    let output = validator(&["keys", "import", "--from", "hex", "--out", out_arg], &hex);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("never overwritten"));
}

#[test]
fn bad_secrets_are_refused_without_echoing_them() {
    let out = crate::temp_path("bad.key");
    let out_arg = out.to_str().unwrap();
    for (from, input, needle) in [
        ("hex", "11".repeat(28), "has 56 characters"),
        ("hex", "xy".repeat(32), "not hex"),
        ("mnemonic", PHRASE.replace("about", "abandon"), "checksum"),
    ] {
        let output = validator(&["keys", "import", "--from", from, "--out", out_arg], &input);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains(&input[..8]), "the secret is not echoed: {stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn the_version_names_the_commit_and_the_build_date() {
    let output = Command::new(crate::binary()).arg("--version").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("validator ") && text.contains("(commit "), "{text}");
    assert!(text.contains(", built "), "{text}");
}

/// A warm key must hold the account's grants for what it sends; the check asks the chain (a
/// real RPC on loopback) and names what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_key_without_the_accounts_grants_is_named() {
    use chain_source::{proto, ChainNodeClient, Signer};
    use validator_demo::{DemoOptions, Scenario};

    let options = DemoOptions::default();
    let scenario = Scenario::start(&options).await.unwrap();
    let settings = scenario.settings(&options);
    let warm = Signer::from_bytes(&[0x33; 32]).unwrap();
    let warm_address = scenario.chain.add_key(&warm.public_key());
    let chain = ChainNodeClient::new(
        &settings.chain,
        &testkit::public_tls(),
        scenario.address.clone(),
        warm.clone(),
    )
    .unwrap();
    let check = || validator_bin::app::check_grants(&chain, &scenario.address, &warm_address);

    let err = check().await.unwrap_err().to_string();
    assert!(err.contains(proto::MSG_VALIDATION_TYPE_URL), "{err}");
    assert!(err.contains(proto::MSG_CLAIM_REWARDS_TYPE_URL), "{err}");
    assert!(err.contains("grant-ml-ops-permissions"), "{err}");

    scenario.chain.grant(&scenario.address, &warm_address, proto::MSG_VALIDATION_TYPE_URL);
    let err = check().await.unwrap_err().to_string();
    assert!(!err.contains(proto::MSG_VALIDATION_TYPE_URL), "{err}");
    assert!(err.contains(proto::MSG_CLAIM_REWARDS_TYPE_URL), "{err}");

    scenario.chain.grant(&scenario.address, &warm_address, proto::MSG_CLAIM_REWARDS_TYPE_URL);
    check().await.unwrap();
}

/// The chain client a validator at the demo's account signs with, on `scenario`'s chain.
fn demo_client(scenario: &validator_demo::Scenario) -> chain_source::ChainNodeClient {
    let settings = scenario.settings(&validator_demo::DemoOptions::default());
    chain_source::ChainNodeClient::new(
        &settings.chain,
        &testkit::public_tls(),
        scenario.address.clone(),
        validator_demo::validator_key().unwrap(),
    )
    .unwrap()
}

/// The double-signer guard: quiet blocks let the node start; a transaction of its key sent by
/// another process while it watches stops it, naming the key's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_signer_of_the_key_stops_the_start() {
    use validator_bin::guard::{GuardError, Watch};
    use validator_core::ports::chain::{ChainClient as _, MsgValidation};
    use validator_demo::{inference_id, DemoOptions, Scenario};

    let options = DemoOptions { backlog: 1, ..DemoOptions::default() };
    let cancel = tokio_util::sync::CancellationToken::new();

    let quiet = Scenario::start(&options).await.unwrap();
    let chain = demo_client(&quiet);
    let watch = Watch::start(&chain, &quiet.address, 2).await.unwrap();
    quiet.chain.advance(2);
    watch.finish(&cancel).await.unwrap();

    let busy = Scenario::start(&options).await.unwrap();
    let chain = demo_client(&busy);
    let watch = Watch::start(&chain, &busy.address, 1_000).await.unwrap();
    // Another process with the same key sends a validation.
    let other = demo_client(&busy);
    let msg = MsgValidation {
        id: "5d3b0c7e-8a43-4f3e-9c1a-2b7d4e6f8a90".into(),
        inference_id: inference_id("backlog", 0).into(),
        response_hash: "ab".repeat(32),
        value_decimal: validator_core::scoring::ValueDecimal { value: 1, exponent: 0 },
        revalidation: false,
    };
    other.submit_validation(&msg).await.unwrap();
    busy.chain.advance(1);
    let err = tokio::time::timeout(Duration::from_secs(20), watch.finish(&cancel)).await.unwrap();
    let Err(GuardError::OtherSigner { address, before, after, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((address.as_str(), *before + 1), (busy.address.as_str(), *after));
    let message = err.unwrap_err().to_string();
    assert!(message.contains(&busy.address) && message.contains("guard_blocks = 0"), "{message}");
}
