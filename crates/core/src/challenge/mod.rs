//! Fresh evidence (docs/design.md §6): client nonces batched into a Merkle tree whose root a quote
//! commits to, so many concurrent challengers share one ~1 s quote.
//!
//! [`merkle`] is the format a third party reproduces (docs/formats.md), [`verify_challenge`]
//! the client-side binding check; the daemon's batcher builds the trees.

mod error;
pub mod merkle;
mod verify;

pub use error::ChallengeError;
pub use merkle::{Proof, ProofJson};
pub use verify::{CHALLENGE_GPU_DOMAIN, gpu_bound_root, verify_challenge, verify_challenge_bound};

#[cfg(test)]
mod merkle_tests;
