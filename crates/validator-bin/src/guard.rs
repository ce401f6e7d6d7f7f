//! The double-signer guard, in the spirit of Lighthouse's doppelganger protection: before the
//! node sends anything, it watches the chain for `identity.guard_blocks` blocks and refuses to
//! start if the key it signs with signs elsewhere meanwhile.
//!
//! A Cosmos account's sequence counts the transactions it signed. This node has sent nothing
//! yet, so a sequence that moves while it watches means another process holds the same key (an
//! upstream API node given the same warm key, a second copy of this node): two signers of one
//! key race for its sequence and may send the same validation twice.

use std::time::Duration;

use chain_source::ChainNodeClient;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How often the guard asks the chain node for its height.
const POLL: Duration = Duration::from_secs(1);

/// The most the guard waits for one block before it gives up on the chain node.
const BLOCK_BOUND: Duration = Duration::from_secs(120);

/// Why the guard did not let the node start.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Another process signed with this node's key while it watched.
    #[error(
        "another process signs with the key of {address}: its sequence moved from {before} to \
         {after} in {blocks} blocks while this node sent nothing. Stop the other signer (an \
         upstream API node or a second validator given the same key) or give this node a key \
         of its own; `identity.guard_blocks = 0` skips this check"
    )]
    OtherSigner {
        /// The signing key's account.
        address: String,
        /// Its sequence when the watch began.
        before: u64,
        /// Its sequence when another transaction was seen.
        after: u64,
        /// Blocks watched.
        blocks: u64,
    },
    /// The chain could not be watched.
    #[error("the double-signer guard cannot watch the chain: {0}")]
    Chain(String),
    /// Shutdown came first.
    #[error("stopped while watching for other signers")]
    Cancelled,
}

/// Watches `blocks` blocks for a transaction of `signer_address` this node did not send (see
/// the module docs). `Ok` when none came; `blocks == 0` returns at once.
pub async fn watch_for_other_signers(
    chain: &ChainNodeClient,
    signer_address: &str,
    blocks: u64,
    cancel: &CancellationToken,
) -> Result<(), GuardError> {
    if blocks == 0 {
        return Ok(());
    }
    Watch::start(chain, signer_address, blocks).await?.finish(cancel).await
}

/// A watch under way: the key's sequence and the chain's height when it began.
#[derive(Debug)]
pub struct Watch<'a> {
    chain: &'a ChainNodeClient,
    address: String,
    before: u64,
    start: u64,
    blocks: u64,
}

impl<'a> Watch<'a> {
    /// Reads the sequence of `signer_address` and the chain's height: the watch's baseline.
    pub async fn start(
        chain: &'a ChainNodeClient,
        signer_address: &str,
        blocks: u64,
    ) -> Result<Self, GuardError> {
        info!(%signer_address, blocks, "watching the chain for another signer of this key");
        let before = sequence(chain, signer_address).await?;
        let start = height(chain).await?;
        Ok(Self { chain, address: signer_address.to_owned(), before, start, blocks })
    }

    /// Watches until `blocks` blocks after the baseline passed with the sequence unmoved.
    pub async fn finish(self, cancel: &CancellationToken) -> Result<(), GuardError> {
        let end = self.start.saturating_add(self.blocks);
        let mut last = self.start;
        let mut last_change = tokio::time::Instant::now();
        loop {
            let after = sequence(self.chain, &self.address).await?;
            if after > self.before {
                return Err(GuardError::OtherSigner {
                    address: self.address,
                    before: self.before,
                    after,
                    blocks: last.saturating_sub(self.start),
                });
            }
            if last >= end {
                info!(blocks = self.blocks, "no other signer of this key seen");
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(GuardError::Cancelled),
                () = tokio::time::sleep(POLL) => {}
            }
            let now = height(self.chain).await?;
            if now > last {
                last = now;
                last_change = tokio::time::Instant::now();
            } else if last_change.elapsed() > BLOCK_BOUND {
                return Err(GuardError::Chain(format!(
                    "no new block for {} s (at height {last})",
                    BLOCK_BOUND.as_secs()
                )));
            }
        }
    }
}

/// The account's next sequence; an account the chain does not know yet has signed nothing.
async fn sequence(chain: &ChainNodeClient, address: &str) -> Result<u64, GuardError> {
    match chain.query().account(address).await {
        Ok(account) => Ok(account.sequence),
        Err(chain_source::Error::NotFound(_)) => Ok(0),
        Err(err) => Err(GuardError::Chain(format!("reading the account {address}: {err}"))),
    }
}

async fn height(chain: &ChainNodeClient) -> Result<u64, GuardError> {
    chain
        .node_status()
        .await
        .map(|status| status.latest_height)
        .map_err(|err| GuardError::Chain(format!("reading the chain's height: {err}")))
}
