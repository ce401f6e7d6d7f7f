//! The per-epoch sampling seed (DOMAIN.md 2.2, upstream `CreateSeedForEpoch`).

use crate::Signer;

/// The seed of `epoch`: the signer signs the 8-byte big-endian epoch index (ECDSA over SHA-256,
/// as the Cosmos keyring signs raw bytes); the first 8 bytes of the 64-byte signature, read as a
/// big-endian integer with the top bit cleared, are the seed, and 0 becomes 1.
///
/// Upstream signs with the keyring's signer account: the warm key when one is configured, else
/// the account key. Signatures are deterministic (RFC 6979), so the seed can be rebuilt after a
/// restart.
pub fn seed_for_epoch(signer: &Signer, epoch: u64) -> i64 {
    let signature = signer.sign(&epoch.to_be_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&signature[..8]);
    let seed = u64::from_be_bytes(head) & (u64::MAX >> 1);
    i64::try_from(seed).map_or(1, |seed| seed.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_the_signature_head_without_the_sign_bit() {
        let signer = Signer::from_bytes(&[7; 32]).unwrap();
        for epoch in [0, 1, 42, u64::MAX] {
            let seed = seed_for_epoch(&signer, epoch);
            let signature = signer.sign(&epoch.to_be_bytes());
            let expected = u64::from_be_bytes(signature[..8].try_into().unwrap()) & (u64::MAX >> 1);
            assert_eq!(seed as u64, expected.max(1));
            assert!(seed > 0);
            assert_eq!(seed, seed_for_epoch(&signer, epoch), "deterministic");
        }
        assert_ne!(seed_for_epoch(&signer, 1), seed_for_epoch(&signer, 2));
    }
}
