//! Tests of the challenge tree against an independent reference and published RFC 6962 values.

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::ChallengeError;
use super::merkle::{
    self, Hash, Proof, ProofJson, all_proofs, leaf_hash, proof, root, root_from_inclusion,
    verify_inclusion,
};
use super::verify_challenge;

// --- An independent reference, written straight from RFC 6962 §2.1 without the module's code.

fn sha(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn ref_leaf(nonce: &[u8], spki: &Hash) -> Hash {
    let mut data = b"tdx-agent/challenge/v1".to_vec();
    data.push(nonce.len() as u8);
    data.extend_from_slice(nonce);
    data.extend_from_slice(spki);
    sha(&[&[0u8], &data])
}

fn ref_k(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn ref_mth(d: &[Hash]) -> Hash {
    if d.len() == 1 {
        return d[0];
    }
    let k = ref_k(d.len());
    sha(&[&[1u8], &ref_mth(&d[..k]), &ref_mth(&d[k..])])
}

fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() == 1 {
        return vec![];
    }
    let k = ref_k(d.len());
    if m < k {
        let mut p = ref_path(m, &d[..k]);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_path(m - k, &d[k..]);
        p.push(ref_mth(&d[..k]));
        p
    }
}

fn spki() -> Hash {
    sha(&[b"spki"])
}

/// Nonce i of a test tree: 32 bytes counting up from 32*i (n0 = 0x00..0x1f), plus a byte
/// telling apart the nonces whose count wrapped (i >= 8).
fn nonce(i: usize) -> Vec<u8> {
    let mut n: Vec<u8> = (0..32).map(|j| (32 * i + j) as u8).collect();
    if i >= 8 {
        n.push((i / 8) as u8);
    }
    n
}

fn leaves(n: usize) -> Vec<Hash> {
    (0..n).map(|i| ref_leaf(&nonce(i), &spki())).collect()
}

fn h(text: &str) -> Hash {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).unwrap();
    out
}

// --- Published values.

/// The certificate-transparency test leaves and roots (RFC 6962 reference implementation).
#[test]
fn matches_certificate_transparency_vectors() {
    let data = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let hashed: Vec<Hash> = data
        .iter()
        .map(|d| sha(&[&[0u8], &hex::decode(d).unwrap()]))
        .collect();
    for n in 1..=8 {
        assert_eq!(hex::encode(root(&hashed[..n])), roots[n - 1], "root of {n}");
        assert_eq!(ref_mth(&hashed[..n]), root(&hashed[..n]));
    }
    assert_eq!(
        hex::encode(root(&[])),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let paths: [(usize, [&str; 3]); 2] = [
        (
            0,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, path) in paths {
        let p = proof(&hashed, index).unwrap();
        assert_eq!(p.tree_size, 8);
        let hexed: Vec<String> = p.audit_path.iter().map(hex::encode).collect();
        assert_eq!(hexed, path, "path of leaf {index}");
        assert!(verify_inclusion(&hashed[index], &p, &h(roots[7])));
    }
}

/// The worked vector docs/formats.md shows: spki_sha256 = SHA-256("spki"), a tree of three
/// 32-byte nonces n0 = 00..1f, n1 = 20..3f, n2 = 40..5f. The hex was computed once with the
/// reference implementation above (and cross-checked with a few lines of Python hashlib) and
/// is pinned here so any change of format shows.
#[test]
fn worked_vector() {
    let spki = spki();
    let ls: Vec<Hash> = (0..3)
        .map(|i| leaf_hash(&nonce(i), &spki).unwrap())
        .collect();
    let r = root(&ls);
    println!("spki_sha256 = {}", hex::encode(spki));
    for (i, l) in ls.iter().enumerate() {
        println!("n{i} = {}", hex::encode(nonce(i)));
        println!("leaf{i} = {}", hex::encode(l));
        let p = proof(&ls, i).unwrap();
        println!("proof{i} = {}", serde_json::to_string(&p).unwrap());
    }
    println!("root = {}", hex::encode(r));
    assert_eq!(ls, leaves(3));
    assert_eq!(r, ref_mth(&ls));
    assert_eq!(
        hex::encode(spki),
        "6feecc8c16c5551d9feb3eb5f77e2da773bf68bd9ef9c52927ceb2c86e56892b"
    );
    assert_eq!(
        hex::encode(ls[0]),
        "b222b14a9b3283717d4aa7c570266e7c3a99ec6d584e185e1f310479344b67e0"
    );
    assert_eq!(
        hex::encode(ls[1]),
        "993acf4c2b26415d9471adb63efd27c894aa2fe2cf7ba4a5fdb235c0bd9bdde5"
    );
    assert_eq!(
        hex::encode(ls[2]),
        "a4a5338c2c550afe3b1947b6919a1346e75c651dfa95e723649f4038c01011c7"
    );
    assert_eq!(
        hex::encode(r),
        "0f2e1dc1f3d8b282acae4081a89f7cd14e23a1be5210d9f10ff1882981d99e6c"
    );
    let p = proof(&ls, 2).unwrap();
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        r#"{"leaf_index":2,"tree_size":3,"audit_path":["f311d8cba6d7dd51f3e8fbd624e51b2b9ca75f0b886d6d6881b304555b9ce695"]}"#
    );
}

// --- Exhaustive small trees against the reference.

#[test]
fn every_proof_of_small_trees_matches_reference_and_verifies() {
    for n in 1..=40usize {
        let ls = leaves(n);
        let r = root(&ls);
        assert_eq!(r, ref_mth(&ls), "root of {n}");
        let (batch_root, batch_proofs) = all_proofs(&ls);
        assert_eq!(batch_root, r);
        assert_eq!(batch_proofs.len(), n);
        for i in 0..n {
            let p = proof(&ls, i).unwrap();
            assert_eq!(p.audit_path, ref_path(i, &ls), "path {i} of {n}");
            assert_eq!((p.leaf_index, p.tree_size), (i as u64, n as u64));
            assert_eq!(batch_proofs[i], p);
            assert!(verify_inclusion(&ls[i], &p, &r), "leaf {i} of {n}");
            if n == 1 {
                assert!(p.audit_path.is_empty());
                assert_eq!(r, ls[0], "a single leaf's root is its leaf hash");
            }
        }
    }
}

#[test]
fn any_flipped_byte_breaks_verification() {
    for n in 1..=40usize {
        let ls = leaves(n);
        let r = root(&ls);
        for i in 0..n {
            let good = proof(&ls, i).unwrap();
            for e in 0..good.audit_path.len() {
                for b in 0..32 {
                    let mut p = good.clone();
                    p.audit_path[e][b] ^= 0x01;
                    assert!(!verify_inclusion(&ls[i], &p, &r), "{n}/{i} path[{e}][{b}]");
                }
            }
            for b in 0..8 {
                // XOR 0xff in any byte moves index and size far outside a tree of <= 40
                // leaves: no longer in range, or a path of the wrong length. (A smaller change
                // of size alone can keep the tree's shape, which RFC 9162 accepts.)
                let mut p = good.clone();
                p.leaf_index ^= 0xff << (8 * b);
                assert!(!verify_inclusion(&ls[i], &p, &r), "{n}/{i} index byte {b}");
                let mut p = good.clone();
                p.tree_size ^= 0xff << (8 * b);
                assert!(!verify_inclusion(&ls[i], &p, &r), "{n}/{i} size byte {b}");
            }
            for j in (0..n + 2).filter(|&j| j != i) {
                let mut p = good.clone();
                p.leaf_index = j as u64;
                assert!(!verify_inclusion(&ls[i], &p, &r), "{n}/{i} as index {j}");
                // Another leaf under this proof must fail too.
                if j < n {
                    assert!(!verify_inclusion(&ls[j], &good, &r), "{n}: leaf {j} as {i}");
                }
            }
            let mut longer = good.clone();
            longer.audit_path.push(r);
            assert!(!verify_inclusion(&ls[i], &longer, &r), "{n}/{i} longer");
            if !good.audit_path.is_empty() {
                let mut shorter = good.clone();
                shorter.audit_path.pop();
                assert!(!verify_inclusion(&ls[i], &shorter, &r), "{n}/{i} shorter");
            }
            let mut other_root = r;
            other_root[31] ^= 0x80;
            assert!(!verify_inclusion(&ls[i], &good, &other_root));
        }
    }
}

#[test]
fn leaf_rules() {
    let s = spki();
    assert_eq!(
        leaf_hash(&[], &s),
        Err(ChallengeError::NonceLength { len: 0 })
    );
    assert_eq!(
        leaf_hash(&[0; 65], &s),
        Err(ChallengeError::NonceLength { len: 65 })
    );
    for len in [1, 2, 31, 63, 64] {
        let n = vec![0xa5; len];
        assert_eq!(leaf_hash(&n, &s).unwrap(), ref_leaf(&n, &s), "len {len}");
    }
    // The length byte keeps (nonce, spki) splits apart even when the bytes concatenate alike.
    assert_ne!(
        leaf_hash(&[1, 2], &s).unwrap(),
        leaf_hash(&[1, 2, 0], &s).unwrap()
    );
    assert_ne!(
        leaf_hash(&[1], &s).unwrap(),
        leaf_hash(&[1], &[0; 32]).unwrap()
    );
    assert!(matches!(
        proof(&leaves(3), 3),
        Err(ChallengeError::IndexOutOfRange { index: 3, size: 3 })
    ));
    assert!(proof(&[], 0).is_err());
}

#[test]
fn json_form_round_trips_and_rejects_bad_hex() {
    let ls = leaves(5);
    let p = proof(&ls, 4).unwrap();
    let text = serde_json::to_string(&p).unwrap();
    let j: ProofJson = serde_json::from_str(&text).unwrap();
    assert_eq!(j.audit_path[0], hex::encode(p.audit_path[0]));
    assert_eq!(Proof::try_from(j.clone()).unwrap(), p);
    assert_eq!(ProofJson::from(p.clone()), j);
    assert_eq!(serde_json::from_str::<Proof>(&text).unwrap(), p);

    let bad = |path: Vec<String>| {
        serde_json::from_value::<Proof>(serde_json::json!({
            "leaf_index": 0, "tree_size": 2, "audit_path": path
        }))
        .is_err()
    };
    let good = hex::encode([0xabu8; 32]);
    assert!(!bad(vec![good.clone()]));
    assert!(bad(vec![good.to_uppercase()]));
    assert!(bad(vec![good[..62].to_string()]));
    assert!(bad(vec![format!("{good}00")]));
    assert!(bad(vec![format!("0x{}", &good[2..])]));
    assert!(bad(vec![good.clone(); merkle::MAX_PATH_LEN + 1]));
    assert!(
        serde_json::from_str::<Proof>(r#"{"leaf_index":0,"tree_size":1,"audit_path":[],"x":1}"#)
            .is_err()
    );
}

#[test]
fn verify_challenge_names_each_failure() {
    let s = spki();
    let ls = leaves(3);
    let r = root(&ls);
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&r);
    report_data[32..].copy_from_slice(&[0xee; 32]);
    let p = proof(&ls, 1).unwrap();
    assert_eq!(verify_challenge(&nonce(1), &s, &report_data, &p), Ok(()));
    assert_eq!(
        verify_challenge(&nonce(0), &s, &report_data, &p),
        Err(ChallengeError::RootMismatch)
    );
    assert_eq!(
        verify_challenge(&nonce(1), &[0; 32], &report_data, &p),
        Err(ChallengeError::RootMismatch)
    );
    let mut other = report_data;
    other[0] ^= 1;
    assert_eq!(
        verify_challenge(&nonce(1), &s, &other, &p),
        Err(ChallengeError::RootMismatch)
    );
    // Only the first half of REPORTDATA is the root.
    let mut head_changed = report_data;
    head_changed[40] ^= 1;
    assert_eq!(verify_challenge(&nonce(1), &s, &head_changed, &p), Ok(()));
    let mut wrong_size = p.clone();
    wrong_size.tree_size = 1;
    assert!(matches!(
        verify_challenge(&nonce(1), &s, &report_data, &wrong_size),
        Err(ChallengeError::MalformedProof(_))
    ));
    assert_eq!(
        verify_challenge(&[], &s, &report_data, &p),
        Err(ChallengeError::NonceLength { len: 0 })
    );
}

proptest! {
    #[test]
    fn hostile_proofs_never_panic(
        leaf in any::<[u8; 32]>(),
        root_ in any::<[u8; 32]>(),
        leaf_index in prop_oneof![any::<u64>(), 0u64..70, Just(u64::MAX), Just(u64::MAX - 1)],
        tree_size in prop_oneof![any::<u64>(), 0u64..70, Just(u64::MAX), Just(0)],
        path in prop::collection::vec(any::<[u8; 32]>(), 0..80),
    ) {
        let p = Proof { leaf_index, tree_size, audit_path: path };
        let _ = root_from_inclusion(&leaf, &p);
        prop_assert!(!verify_inclusion(&leaf, &p, &root_) || root_from_inclusion(&leaf, &p) == Some(root_));
        let mut rd = [0u8; 64];
        rd[..32].copy_from_slice(&root_);
        let _ = verify_challenge(&leaf[..(leaf[0] as usize % 33)], &leaf, &rd, &p);
    }

    #[test]
    fn hostile_json_never_panics(
        leaf_index in any::<u64>(),
        tree_size in any::<u64>(),
        path in prop::collection::vec(".{0,70}", 0..5),
    ) {
        let _ = Proof::try_from(ProofJson { leaf_index, tree_size, audit_path: path });
    }

    #[test]
    fn random_trees_verify(n in 1usize..600, pick in any::<prop::sample::Index>()) {
        let ls: Vec<Hash> = (0..n).map(|i| sha(&[&(i as u64).to_le_bytes()])).collect();
        let i = pick.index(n);
        let (r, all) = all_proofs(&ls);
        prop_assert_eq!(&all[i], &proof(&ls, i).unwrap());
        prop_assert!(verify_inclusion(&ls[i], &all[i], &r));
        prop_assert_eq!(root_from_inclusion(&ls[i], &all[i]), Some(r));
    }
}
