//! Key files: what `validator keys import` writes, what `validator keys show` prints, and the
//! checks a key file passes before the node signs with it.
//!
//! A key file holds one secp256k1 secret as 64 hex digits and a newline, readable by its owner
//! only (mode 0600). The secret comes either as hex (what `inferenced keys export
//! --unarmored-hex --unsafe` prints) or from a BIP-39 mnemonic on the Cosmos path
//! `m/44'/118'/0'/0/0`, the account `inferenced keys add --recover` makes of it.

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use bip32::{DerivationPath, XPrv};
use bip39::{Language, Mnemonic};
use chain_source::{hex, tx::address_of, Signer};
use serde_json::{json, Value};

/// The Cosmos SDK's default derivation path for coin type 118, which `inferenced` uses.
pub const COSMOS_PATH: &str = "m/44'/118'/0'/0/0";

/// What `validator keys import` reads from standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeySource {
    /// 64 hex digits: the 32-byte secret.
    Hex,
    /// A BIP-39 mnemonic (12 to 24 English words), derived on `m/44'/118'/0'/0/0`.
    Mnemonic,
}

/// The 32-byte secret `input` holds: exactly 64 hex digits (either case, surrounding
/// whitespace ignored) that make a valid secp256k1 secret. Errors never quote the input.
pub fn secret_from_hex(input: &str) -> anyhow::Result<[u8; 32]> {
    let text = input.trim();
    let digits = text.len();
    if digits != 64 {
        bail!("a key is 64 hex digits (32 bytes); this has {digits} characters");
    }
    let bytes =
        hex::decode(text).ok_or_else(|| anyhow!("a key is 64 hex digits; this is not hex"))?;
    let secret: [u8; 32] =
        bytes.try_into().map_err(|_| anyhow!("a key is 64 hex digits (32 bytes)"))?;
    Signer::from_bytes(&secret).map_err(|_| anyhow!("not a valid secp256k1 secret"))?;
    Ok(secret)
}

/// The secret of the Cosmos account `phrase` recovers: the BIP-39 seed of the phrase (with
/// `passphrase`, empty for none) derived on [`COSMOS_PATH`]. Words are matched in lower case
/// with any whitespace between them; a word outside the English list or a bad checksum is an
/// error that does not quote the phrase.
pub fn secret_from_mnemonic(phrase: &str, passphrase: &str) -> anyhow::Result<[u8; 32]> {
    let words: Vec<String> = phrase.split_whitespace().map(str::to_lowercase).collect();
    if ![12, 15, 18, 21, 24].contains(&words.len()) {
        bail!("a BIP-39 mnemonic has 12, 15, 18, 21 or 24 words; this has {}", words.len());
    }
    let mnemonic = Mnemonic::parse_in_normalized(Language::English, &words.join(" ")).map_err(
        |err| match err {
            bip39::Error::UnknownWord(at) => {
                anyhow!("not a BIP-39 mnemonic: word {} is not in the English list", at + 1)
            }
            _ => anyhow!("not a BIP-39 mnemonic: the checksum is wrong (a word is mistyped)"),
        },
    )?;
    let seed = mnemonic.to_seed(passphrase);
    let path: DerivationPath =
        COSMOS_PATH.parse().map_err(|err| anyhow!("{COSMOS_PATH}: {err}"))?;
    let key = XPrv::derive_from_path(seed, &path)
        .map_err(|err| anyhow!("deriving {COSMOS_PATH}: {err}"))?;
    Ok(key.private_key().to_bytes().into())
}

/// Writes `secret` to a new key file at `path`, mode 0600. An existing file is never
/// overwritten.
pub fn write_key_file(path: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow!("{} exists; a key file is never overwritten", path.display())
        }
        _ => anyhow!("creating {}: {err}", path.display()),
    })?;
    file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The signer in the key file at `path`, after the checks: the file is readable by its owner
/// only, and holds exactly 64 hex digits. Errors name the file and the fix, never its content.
pub fn read_key_file(path: &Path) -> anyhow::Result<Signer> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the key file {} is readable by group or others (mode {mode:03o}); \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    let secret = secret_from_hex(&text).map_err(|err| {
        anyhow!(
            "{}: {err}; `validator keys import` writes a key file from a hex secret or a mnemonic",
            path.display()
        )
    })?;
    Signer::from_bytes(&secret)
        .map_err(|_| anyhow!("{}: not a valid secp256k1 secret", path.display()))
}

/// The bech32 address of `signer` under `prefix`.
pub fn address(signer: &Signer, prefix: &str) -> anyhow::Result<String> {
    address_of(&signer.public_key(), prefix).map_err(|err| anyhow!("address: {err}"))
}

/// What `validator keys show` prints: `{"address", "public_key"}`, the public key compressed, in
/// hex.
pub fn show(path: &Path, prefix: &str) -> anyhow::Result<Value> {
    let signer = read_key_file(path)?;
    Ok(json!({
        "address": address(&signer, prefix)?,
        "public_key": hex::encode(&signer.public_key()),
    }))
}

/// `validator keys import`: reads the secret from `input` as `source` says, writes it to `out`
/// and returns what [`show`] prints of it.
pub fn import(
    source: KeySource,
    input: &str,
    passphrase_file: Option<&PathBuf>,
    out: &Path,
    prefix: &str,
) -> anyhow::Result<Value> {
    let secret = match source {
        KeySource::Hex => {
            if passphrase_file.is_some() {
                bail!("--passphrase-file goes with --from mnemonic");
            }
            secret_from_hex(input)?
        }
        KeySource::Mnemonic => {
            let passphrase = match passphrase_file {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
                None => String::new(),
            };
            secret_from_mnemonic(input, &passphrase)?
        }
    };
    write_key_file(out, &secret)?;
    show(out, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP-39's all-`abandon` test phrase: public, never to hold funds.
    const PHRASE: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                          abandon abandon about";

    /// A fresh directory for one test's files.
    fn dir() -> PathBuf {
        let dir = testkit::process::temp_path("keys");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_mnemonic_gives_the_account_every_cosmos_wallet_derives() {
        let secret = secret_from_mnemonic(PHRASE, "").unwrap();
        let signer = Signer::from_bytes(&secret).unwrap();
        assert_eq!(
            address(&signer, "cosmos").unwrap(),
            "cosmos19rl4cm2hmr8afy4kldpxz3fka4jguq0auqdal4"
        );
        // Case and spacing do not matter; a passphrase gives another account.
        let shouted = PHRASE.to_uppercase().replace(' ', "  \n");
        assert_eq!(secret_from_mnemonic(&shouted, "").unwrap(), secret);
        assert_ne!(secret_from_mnemonic(PHRASE, "extra").unwrap(), secret);
    }

    #[test]
    fn bad_mnemonics_are_refused_without_quoting_them() {
        let wrong_checksum = PHRASE.replace("about", "abandon");
        let err = secret_from_mnemonic(&wrong_checksum, "").unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(!err.contains("abandon"), "{err}");
        let err = secret_from_mnemonic("abandon about", "").unwrap_err().to_string();
        assert!(err.contains("this has 2"), "{err}");
        let unknown = PHRASE.replace("about", "zzzz");
        assert!(secret_from_mnemonic(&unknown, "").is_err());
    }

    #[test]
    fn a_hex_secret_is_exactly_64_digits() {
        let hex64 = "8d1bb3f6a1bda2b6b0b9e0f4f3d3a8f1c6b2a4e5d7c9b1a3f5e7d9c1b3a5f7e9";
        assert!(secret_from_hex(&format!("  {}\n", hex64.to_uppercase())).is_ok());
        for short in [48, 62] {
            let err = secret_from_hex(&hex64[..short]).unwrap_err().to_string();
            assert!(err.contains(&format!("has {short} characters")), "{err}");
        }
        assert!(secret_from_hex(&format!("{hex64}00")).is_err());
        assert!(secret_from_hex(&"zz".repeat(32)).is_err());
        assert!(secret_from_hex(&"00".repeat(32)).is_err(), "zero is not a secret");
        assert!(secret_from_hex(&"ff".repeat(32)).is_err(), "above the group order");
    }

    #[test]
    fn import_writes_an_owner_only_file_and_never_overwrites() {
        let dir = dir();
        let out = dir.join("account.key");
        let shown = import(KeySource::Mnemonic, PHRASE, None, &out, "gonka").unwrap();
        assert!(shown["address"]
            .as_str()
            .unwrap()
            .starts_with("gonka19rl4cm2hmr8afy4kldpxz3fka4jguq0a"));
        assert_eq!(shown["public_key"].as_str().unwrap().len(), 66);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(show(&out, "gonka").unwrap(), shown);
        let err = import(KeySource::Mnemonic, PHRASE, None, &out, "gonka").unwrap_err();
        assert!(err.to_string().contains("never overwritten"), "{err}");
    }

    #[test]
    fn a_passphrase_file_changes_the_account_and_goes_with_mnemonics_only() {
        let dir = dir();
        let passphrase = dir.join("passphrase");
        std::fs::write(&passphrase, "extra\n").unwrap();
        let with =
            import(KeySource::Mnemonic, PHRASE, Some(&passphrase), &dir.join("a.key"), "gonka")
                .unwrap();
        let expected = Signer::from_bytes(&secret_from_mnemonic(PHRASE, "extra").unwrap()).unwrap();
        assert_eq!(with["address"], address(&expected, "gonka").unwrap());
        let hex64 = "8d1bb3f6a1bda2b6b0b9e0f4f3d3a8f1c6b2a4e5d7c9b1a3f5e7d9c1b3a5f7e9";
        assert!(
            import(KeySource::Hex, hex64, Some(&passphrase), &dir.join("b.key"), "gonka").is_err()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = dir();
        let path = dir.join("k");
        std::fs::write(&path, "8d1bb3f6a1bda2b6b0b9e0f4f3d3a8f1c6b2a4e5d7c9b1a3f5e7d9c1b3a5f7e9\n")
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key_file(&path).is_ok());
        std::fs::write(&path, "ab".repeat(28)).unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits") && !err.contains("abab"), "{err}");
    }
}
