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
    verify_challenge_bound(nonce, spki_sha256, report_data, proof, None)
}

/// What REPORTDATA[0..32] of a challenge quote holds when the agent attests GPUs: the batch's
/// Merkle root and the digest of the GPU evidence collected for that batch, under a domain of
/// their own (docs/formats.md §8), so one quote commits to both.
pub fn gpu_bound_root(root: &Hash, gpu_evidence_sha256: &[u8; 32]) -> Hash {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(CHALLENGE_GPU_DOMAIN);
    h.update(root);
    h.update(gpu_evidence_sha256);
    h.finalize().into()
}

/// The domain of [`gpu_bound_root`].
pub const CHALLENGE_GPU_DOMAIN: &[u8] = b"tdx-agent/challenge-gpu/v1";

/// As [`verify_challenge`]; with `gpu_evidence_sha256`, REPORTDATA[0..32] must be
/// [`gpu_bound_root`] of the proof's root and that digest.
pub fn verify_challenge_bound(
    nonce: &[u8],
    spki_sha256: &Hash,
    report_data: &[u8; 64],
    proof: &Proof,
    gpu_evidence_sha256: Option<&[u8; 32]>,
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
    let committed = match gpu_evidence_sha256 {
        Some(d) => gpu_bound_root(&root, d),
        None => root,
    };
    if report_data[..32] == committed {
        Ok(())
    } else {
        Err(ChallengeError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_bound_root_verifies_only_with_its_digest() {
        let spki = [7u8; 32];
        let leaves = [
            merkle::leaf_hash(b"a", &spki).unwrap(),
            merkle::leaf_hash(b"b", &spki).unwrap(),
        ];
        let (root, proofs) = merkle::all_proofs(&leaves);
        let digest = [9u8; 32];
        let mut rd = [0u8; 64];
        rd[..32].copy_from_slice(&gpu_bound_root(&root, &digest));
        verify_challenge_bound(b"b", &spki, &rd, &proofs[1], Some(&digest)).unwrap();
        // Without the digest, with another digest, or another nonce: refused.
        assert_eq!(
            verify_challenge(b"b", &spki, &rd, &proofs[1]),
            Err(ChallengeError::RootMismatch)
        );
        assert_eq!(
            verify_challenge_bound(b"b", &spki, &rd, &proofs[1], Some(&[8; 32])),
            Err(ChallengeError::RootMismatch)
        );
        assert!(verify_challenge_bound(b"a", &spki, &rd, &proofs[1], Some(&digest)).is_err());
        // The plain form still verifies the plain root.
        rd[..32].copy_from_slice(&root);
        verify_challenge(b"b", &spki, &rd, &proofs[1]).unwrap();
    }
}
