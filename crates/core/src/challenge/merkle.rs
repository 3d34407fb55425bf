//! The challenge Merkle tree (docs/design.md §6): RFC 6962 hashing and audit paths, RFC 9162
//! verification, over leaves that bind a client nonce to the serving key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ChallengeError;

/// Domain separation so a challenge leaf can never be mistaken for any other SHA-256 input the
/// agent signs or logs.
pub const LEAF_PREFIX: &[u8] = b"tdx-agent/challenge/v1";
/// Longest nonce accepted; its length must fit the one length byte with room to spare.
pub const MAX_NONCE_LEN: usize = 64;
/// No tree with a `u64` size has a longer audit path; anything longer is hostile.
pub const MAX_PATH_LEN: usize = 64;

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// An inclusion proof as RFC 6962 PATH: the leaf's index, the tree size, and the sibling
/// hashes from the leaf upwards.
///
/// Serialises as `{"leaf_index", "tree_size", "audit_path": [lowercase hex]}` (see
/// [`ProofJson`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProofJson", into = "ProofJson")]
pub struct Proof {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub audit_path: Vec<Hash>,
}

/// The JSON form of a [`Proof`]: digests as lowercase hex, as every digest in our JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofJson {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub audit_path: Vec<String>,
}

impl From<Proof> for ProofJson {
    fn from(p: Proof) -> Self {
        Self {
            leaf_index: p.leaf_index,
            tree_size: p.tree_size,
            audit_path: p.audit_path.iter().map(hex::encode).collect(),
        }
    }
}

impl TryFrom<ProofJson> for Proof {
    type Error = ChallengeError;

    fn try_from(j: ProofJson) -> Result<Self, ChallengeError> {
        if j.audit_path.len() > MAX_PATH_LEN {
            return Err(ChallengeError::MalformedProof(format!(
                "audit path has {} entries, at most {MAX_PATH_LEN} are possible",
                j.audit_path.len()
            )));
        }
        let audit_path = j
            .audit_path
            .iter()
            .enumerate()
            .map(|(i, text)| {
                decode_hash(text)
                    .map_err(|e| ChallengeError::MalformedProof(format!("audit_path[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            leaf_index: j.leaf_index,
            tree_size: j.tree_size,
            audit_path,
        })
    }
}

/// Exactly 64 lowercase hex digits: one spelling per digest keeps the format canonical.
fn decode_hash(text: &str) -> Result<Hash, String> {
    if text.len() != 64 {
        return Err(format!("{} characters, expected 64 hex digits", text.len()));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("not lowercase hex".into());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// SHA-256(0x00 || "tdx-agent/challenge/v1" || len(nonce) as one byte || nonce || spki_sha256).
pub fn leaf_hash(nonce: &[u8], spki_sha256: &Hash) -> Result<Hash, ChallengeError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(ChallengeError::NonceLength { len: nonce.len() });
    }
    let len =
        u8::try_from(nonce.len()).map_err(|_| ChallengeError::NonceLength { len: nonce.len() })?;
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(LEAF_PREFIX);
    h.update([len]);
    h.update(nonce);
    h.update(spki_sha256);
    Ok(h.finalize().into())
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (n >= 2): where RFC 6962 MTH splits.
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// RFC 6962 MTH over already-hashed leaves. The empty tree is SHA-256 of nothing, as in the
/// RFC; the batcher never builds one.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// RFC 6962 PATH for the leaf at `index`. Costs O(n); [`all_proofs`] serves a whole batch.
pub fn proof(leaves: &[Hash], index: usize) -> Result<Proof, ChallengeError> {
    if index >= leaves.len() {
        return Err(ChallengeError::IndexOutOfRange {
            index: index as u64,
            size: leaves.len() as u64,
        });
    }
    let mut audit_path = Vec::new();
    path_into(leaves, index, &mut audit_path);
    Ok(Proof {
        leaf_index: index as u64,
        tree_size: leaves.len() as u64,
        audit_path,
    })
}

fn path_into(leaves: &[Hash], index: usize, out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    // PATH lists siblings from the bottom up, so the deeper part goes in first.
    if index < k {
        path_into(&leaves[..k], index, out);
        out.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], index - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// The root and every leaf's proof in O(n log n): a batch of thousands cannot afford O(n)
/// per proof.
pub fn all_proofs(leaves: &[Hash]) -> (Hash, Vec<Proof>) {
    let size = leaves.len() as u64;
    let (root, paths) = all_paths(leaves);
    let proofs = paths
        .into_iter()
        .enumerate()
        .map(|(i, audit_path)| Proof {
            leaf_index: i as u64,
            tree_size: size,
            audit_path,
        })
        .collect();
    (root, proofs)
}

fn all_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves {
        [] => (root(leaves), Vec::new()),
        [one] => (*one, vec![Vec::new()]),
        _ => {
            let k = split(leaves.len());
            let (left, mut left_paths) = all_paths(&leaves[..k]);
            let (right, right_paths) = all_paths(&leaves[k..]);
            for p in &mut left_paths {
                p.push(right);
            }
            left_paths.extend(right_paths.into_iter().map(|mut p| {
                p.push(left);
                p
            }));
            (node_hash(&left, &right), left_paths)
        }
    }
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4), or `None` when the
/// proof's shape cannot belong to a tree of its stated size. Never panics on any input.
///
/// A proof binds the leaf to the root; the size only decides the shape, so one proof can verify
/// under several sizes whose trees share that shape (a property of RFC 9162 itself).
pub fn root_from_inclusion(leaf_hash: &Hash, proof: &Proof) -> Option<Hash> {
    if proof.leaf_index >= proof.tree_size || proof.audit_path.len() > MAX_PATH_LEN {
        return None;
    }
    let mut fn_ = proof.leaf_index;
    let mut sn = proof.tree_size - 1;
    let mut r = *leaf_hash;
    for p in &proof.audit_path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // The last node of a level without a sibling is promoted unchanged: skip those
            // levels.
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf_hash` is in the tree with `root`?
pub fn verify_inclusion(leaf_hash: &Hash, proof: &Proof, root: &Hash) -> bool {
    root_from_inclusion(leaf_hash, proof).is_some_and(|r| r == *root)
}
