//! ECDSA P-384 with SHA-384 verification for the GPU's signatures: its report, the RIMs' and
//! the OCSP answers'.
//!
//! Keys and signatures are parsed by the `p384` crate (so a key that is not a point on P-384
//! stays an error of its own, apart from a signature that does not verify); the verification
//! itself is ring's, which takes about two thirds of the `p384` crate's time (docs/benchmarks.md,
//! "GPU evidence verification"), and a GPU's appraisal verifies three such signatures cold and
//! its report's at every challenge.

use p384::ecdsa::{Signature, VerifyingKey};
use ring::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};

/// Whether `signature` over `message` (hashed with SHA-384 here) verifies under `key`.
pub fn verifies(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let point = key.to_encoded_point(false);
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point.as_bytes())
        .verify(message, &signature.to_bytes())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::SigningKey;
    use p384::ecdsa::signature::{Signer as _, Verifier as _};

    #[test]
    fn agrees_with_the_p384_crate_on_good_and_bad_signatures() {
        let key = SigningKey::from_slice(&[7; 48]).unwrap();
        let public = *key.verifying_key();
        let other = *SigningKey::from_slice(&[8; 48]).unwrap().verifying_key();
        let message = b"an SPDM measurement transcript";
        let signature: Signature = key.sign(message);
        assert!(verifies(&public, message, &signature));
        assert!(public.verify(message, &signature).is_ok());
        assert!(!verifies(&public, b"another transcript", &signature));
        assert!(!verifies(&other, message, &signature));
        // s replaced by n - s: the same signature to ECDSA (no low-S rule, as in the p384 crate).
        let flipped = Signature::from_scalars(signature.r(), -*signature.s()).unwrap();
        assert_eq!(
            verifies(&public, message, &flipped),
            public.verify(message, &flipped).is_ok()
        );
        assert!(verifies(&public, message, &flipped));
    }
}
