//! Fresh evidence (DESIGN §6): client nonces batched into a Merkle tree whose root a quote
//! commits to, so many concurrent challengers share one ~1 s quote.
//!
//! [`merkle`] is the format a third party reproduces (docs/formats.md), [`Batcher`] the
//! server side, [`verify_challenge`] the client-side binding check.

mod batcher;
mod error;
pub mod merkle;
mod verify;

pub use batcher::{
    BatchObserver, BatchReport, BatchStats, Batcher, BatcherConfig, BoxFuture, ChallengeQuoter,
    ChallengeResponse, IssuedQuote,
};
pub use error::ChallengeError;
pub use merkle::{Proof, ProofJson};
pub use verify::verify_challenge;

#[cfg(test)]
mod batcher_tests;
#[cfg(test)]
mod merkle_tests;
