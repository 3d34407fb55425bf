//! The client's half of a challenge: is my nonce, bound to the key I am talking to, under the
//! root the quote signed?

use super::ChallengeError;
use super::merkle::{self, Hash, Proof};

/// Recomputes the leaf from `nonce` and the SHA-256 of the serving certificate's SPKI, follows
/// `proof` and checks it ends at REPORTDATA[0..32]. The quote itself (signature, TCB, policy)
/// and REPORTDATA[32..64] (audit chain head) are checked elsewhere.
pub fn verify_challenge(
    nonce: &[u8],
    spki_sha256: &Hash,
    report_data: &[u8; 64],
    proof: &Proof,
) -> Result<(), ChallengeError> {
    let leaf = merkle::leaf_hash(nonce, spki_sha256)?;
    let root = merkle::root_from_inclusion(&leaf, proof).ok_or_else(|| {
        ChallengeError::MalformedProof(format!(
            "{} audit path entries cannot place leaf {} in a tree of {}",
            proof.audit_path.len(),
            proof.leaf_index,
            proof.tree_size
        ))
    })?;
    if report_data[..32] == root {
        Ok(())
    } else {
        Err(ChallengeError::RootMismatch)
    }
}
