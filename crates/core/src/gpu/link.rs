//! One certificate's signature by the next one's key, the step every chain repeats: remembered
//! by the pair, so chains that share intermediates (a GPU's driver and VBIOS RIMs, the GPUs of
//! one host) verify each shared link once, in a cold appraisal too.

use sha2::{Digest as _, Sha256};
use x509_parser::prelude::X509Certificate;

/// Where link verdicts are remembered. A verdict depends only on the two inputs the key
/// digests (the whole certificate and the issuer's public key), never on the time or the
/// policy, so failures are remembered as safely as successes.
pub trait LinkMemo {
    fn link(&self, key: [u8; 32], verify: &mut dyn FnMut() -> bool) -> bool;
}

/// No memory: every link is verified (the chain functions called on their own).
pub struct Unremembered;

impl LinkMemo for Unremembered {
    fn link(&self, _: [u8; 32], verify: &mut dyn FnMut() -> bool) -> bool {
        verify()
    }
}

/// Whether `cert` (whose DER is `cert_der`) carries a valid signature by `issuer`'s key.
pub(crate) fn signed_by(
    cert_der: &[u8],
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    memo: &dyn LinkMemo,
) -> bool {
    let spki = issuer.public_key().raw;
    let mut h = Sha256::new();
    for part in [b"link".as_slice(), cert_der, spki] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    memo.link(h.finalize().into(), &mut || {
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    })
}
