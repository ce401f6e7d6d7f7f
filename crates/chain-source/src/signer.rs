//! The validator's secp256k1 key: request and transaction signatures, and signature checks of
//! other participants' keys (DOMAIN.md 2.3).

use k256::ecdsa::{
    signature::{Signer as _, Verifier as _},
    Signature, SigningKey, VerifyingKey,
};

use crate::{Error, Result};

/// A secp256k1 signing key. Signatures are ECDSA over SHA-256 of the message, deterministic
/// (RFC 6979) and low-S normalised, 64 bytes `r || s`, as the Cosmos SDK makes them.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// A signer from a 32-byte secret; any other length is refused (k256 alone would pad a
    /// shorter one).
    pub fn from_bytes(secret: &[u8]) -> Result<Self> {
        if secret.len() != 32 {
            return Err(Error::Key(format!("a secret is 32 bytes, not {}", secret.len())));
        }
        SigningKey::from_slice(secret)
            .map(|key| Self { key })
            .map_err(|err| Error::Key(err.to_string()))
    }

    /// A signer from a 64-character hex secret.
    pub fn from_hex(secret: &str) -> Result<Self> {
        let bytes =
            crate::hex::decode(secret.trim()).ok_or_else(|| Error::Key("not hex".into()))?;
        Self::from_bytes(&bytes)
    }

    /// The compressed public key (33 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.verifying_key().to_encoded_point(true).as_bytes().to_vec()
    }

    /// The 32-byte secret, for libraries that need their own key type.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// Signs `message`: ECDSA over its SHA-256, 64 bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature: Signature = self.key.sign(message);
        signature.to_bytes().into()
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &crate::hex::encode(&self.public_key()))
            .finish()
    }
}

/// Whether `signature` (64 bytes `r || s`) over `message` verifies with `public_key`
/// (compressed or uncompressed SEC1). High-S signatures are refused, as the Cosmos SDK's
/// secp256k1 verifier refuses them (malleability).
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_sec1_bytes(public_key) else { return false };
    let Ok(signature) = Signature::from_slice(signature) else { return false };
    if signature.normalize_s().is_some() {
        return false;
    }
    key.verify(message, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8d1bb3f6a1bda2b6b0b9e0f4f3d3a8f1c6b2a4e5d7c9b1a3f5e7d9c1b3a5f7e9";

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let signer = Signer::from_hex(SECRET).unwrap();
        let signature = signer.sign(b"inference-1" as &[u8]);
        assert!(verify(&signer.public_key(), b"inference-1", &signature));
        assert!(!verify(&signer.public_key(), b"inference-2", &signature));
        let other = Signer::from_bytes(&[7; 32]).unwrap();
        assert!(!verify(&other.public_key(), b"inference-1", &signature));
    }

    #[test]
    fn signing_is_deterministic_and_low_s() {
        let signer = Signer::from_hex(SECRET).unwrap();
        let first = signer.sign(b"m");
        assert_eq!(first, signer.sign(b"m"));
        let signature = Signature::from_slice(&first).unwrap();
        assert!(signature.normalize_s().is_none(), "already low-S");
        // The same signature with s replaced by n - s is valid ECDSA but malleable: refused.
        let (r, s) = signature.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        assert!(!verify(&signer.public_key(), b"m", &high.to_bytes()));
    }

    #[test]
    fn bad_keys_and_signatures_are_errors_not_panics() {
        assert!(Signer::from_hex("zz").is_err());
        assert!(Signer::from_bytes(&[0; 32]).is_err());
        assert!(Signer::from_bytes(&[1; 5]).is_err());
        assert!(Signer::from_bytes(&[1; 24]).is_err(), "k256 would pad it");
        assert!(Signer::from_hex(&"01".repeat(31)).is_err());
        assert!(!verify(b"junk", b"m", &[0; 64]));
        let signer = Signer::from_bytes(&[7; 32]).unwrap();
        assert!(!verify(&signer.public_key(), b"m", &[0; 10]));
    }
}
