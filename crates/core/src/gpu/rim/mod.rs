//! NVIDIA reference integrity manifests (RIMs, docs/design.md §14): ISO 19770-2 SWID tags
//! with an enveloped XML signature (ECDSA P-384, C14N 1.1) and the signing chain to NVIDIA's
//! CoRIM root. [`Rim::parse`] applies a strict profile (no DTD, bounded input, one signature in
//! the one allowed place, exactly NVIDIA's algorithms) and reads the measurements; the
//! signature and chain checks are separate so that a report can name each.

mod c14n;
mod chain;
mod dsig;
mod swid;
mod xml;

use p384::ecdsa::SigningKey;

pub use xml::{MAX_ATTRIBUTE_LEN, MAX_DEPTH, MAX_DOCUMENT_LEN, MAX_NAMESPACE_DECLARATIONS};

/// NVIDIA CoRIM signing Root CA, pinned (SHA-256 of its DER
/// 12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1), as NVIDIA's local GPU
/// verifier pins it (nvtrust `local_gpu_verifier/src/verifier/certs/verifier_RIM_root.pem`).
pub const NVIDIA_RIM_ROOT_PEM: &[u8] = include_bytes!("nvidia_rim_root_ca.pem");

/// One `Resource type="Measurement"`: RIM index i is SPDM measurement block i+1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    pub index: u16,
    pub active: bool,
    /// `Hash0` .. `Hash{alternatives-1}`: any of them is a good value.
    pub alternatives: Vec<[u8; 48]>,
    pub name: String,
}

/// A parsed RIM whose structure passed the strict profile; signature and chain not yet checked.
#[derive(Debug, Clone)]
pub struct Rim {
    tag_id: String,
    colloquial_version: String,
    measurements: Vec<RimMeasurement>,
    signature: dsig::Parts,
}

impl std::fmt::Debug for dsig::Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signature")
            .field("digest_value", &hex::encode(self.digest_value))
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Rim {
    /// Parse `xml` and apply the structural profile (NVIDIA's "schema valid"); computes the
    /// canonical forms so that the checks below are pure.
    pub fn parse(xml: &[u8]) -> Result<Rim, RimError> {
        let (text, doc) = xml::parse(xml)?;
        // The signature's place first, so that a moved signature is named as such rather
        // than as an unexpected element where it landed.
        dsig::find(&doc)?;
        let content = swid::content(doc.root_element())?;
        let signature = dsig::parse(text, &doc)?;
        Ok(Rim {
            tag_id: content.tag_id,
            colloquial_version: content.colloquial_version,
            measurements: content.measurements,
            signature,
        })
    }

    /// `SoftwareIdentity@tagId`.
    pub fn tag_id(&self) -> &str {
        &self.tag_id
    }

    /// `Meta@colloquialVersion` as written (NVIDIA compares it lower-cased).
    pub fn colloquial_version(&self) -> &str {
        &self.colloquial_version
    }

    pub fn measurements(&self) -> &[RimMeasurement] {
        &self.measurements
    }

    /// The certificates of `ds:X509Data`, DER, leaf first, as in the document.
    pub fn signing_chain(&self) -> &[Vec<u8>] {
        &self.signature.chain
    }

    /// The reference digest (the document without its signature, canonicalized), then the
    /// ECDSA signature over the canonical SignedInfo with the leaf certificate's key. The
    /// leaf is not trusted here: [`Rim::verify_chain`] says whether it is NVIDIA's.
    pub fn verify_signature(&self) -> Result<(), RimSignatureError> {
        let leaf = self
            .signature
            .chain
            .first()
            .ok_or(RimSignatureError::BadKey {
                detail: "no certificate".into(),
            })?;
        dsig::verify(&self.signature, leaf)
    }

    /// The signing chain up to `root_der` at `at` (Unix seconds); the subjects, leaf first.
    pub fn verify_chain(&self, root_der: &[u8], at: i64) -> Result<Vec<String>, RimChainError> {
        self.verify_chain_with(root_der, at, &crate::gpu::link::Unremembered)
    }

    /// [`Rim::verify_chain`], with its links' signature verdicts kept in `memo`.
    pub(crate) fn verify_chain_with(
        &self,
        root_der: &[u8],
        at: i64,
        memo: &dyn crate::gpu::link::LinkMemo,
    ) -> Result<Vec<String>, RimChainError> {
        chain::verify(&self.signature.chain, root_der, at, memo)
    }
}

/// The canonical form whose SHA-384 is the reference digest: the document without its
/// `ds:Signature` (if any), C14N 1.1 without comments. For simulators and diagnostics.
pub fn canonicalize_for_signing(xml: &[u8]) -> Result<Vec<u8>, RimError> {
    let (text, doc) = xml::parse(xml)?;
    let exclude = dsig::find(&doc)?.map(|n| n.id());
    c14n::document(text, &doc, exclude)
}

/// Sign an unsigned RIM as NVIDIA does (for the simulated NVIDIA PKI): appends a
/// `ds:Signature` as the last child of the root, with the reference digest, the signature by
/// `signing_key` and `chain_der` (leaf first, the root last) in `ds:X509Data`.
pub fn sign_rim(
    unsigned_xml: &[u8],
    signing_key: &SigningKey,
    chain_der: &[Vec<u8>],
) -> Result<Vec<u8>, RimError> {
    dsig::sign(unsigned_xml, signing_key, chain_der)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimError {
    #[error("RIM: {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("RIM: not UTF-8 (at byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("RIM: a document type declaration (DTD, entity declarations) is not allowed")]
    Doctype,
    #[error("RIM: not well-formed XML: {detail}")]
    Xml { detail: String },
    #[error("RIM: more than {max} XML nodes")]
    TooManyNodes { max: u32 },
    #[error("RIM: elements nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("RIM: element {element} has more than {max} attributes")]
    TooManyAttributes { element: String, max: usize },
    #[error("RIM: element {element} has more than {max} namespaces in scope")]
    TooManyNamespaces { element: String, max: usize },
    #[error("RIM: more than {max} namespace declarations (xmlns) in the document")]
    TooManyNamespaceDeclarations { max: usize },
    #[error("RIM: attribute {attribute} of {element} is longer than {max} bytes")]
    AttributeTooLong {
        element: String,
        attribute: String,
        max: usize,
    },
    #[error("RIM: a text node is longer than {max} bytes")]
    TextTooLong { max: usize },
    #[error("RIM: xml:base on {element}, an ancestor of the signed SignedInfo, is not supported")]
    XmlBase { element: String },
    #[error("RIM: the root element is {found}, expected SoftwareIdentity in the SWID namespace")]
    Root { found: String },
    #[error("RIM: {element} has no {attribute} attribute")]
    MissingAttribute { element: String, attribute: String },
    #[error("RIM: {element} has an unexpected attribute {attribute}")]
    UnexpectedAttribute { element: String, attribute: String },
    #[error("RIM: {parent} has no {element} element")]
    MissingElement { parent: String, element: String },
    #[error("RIM: {parent} has more than one {element} element")]
    DuplicateElement { parent: String, element: String },
    #[error("RIM: unexpected element {found} in {parent}")]
    UnexpectedElement { parent: String, found: String },
    #[error(
        "RIM: {element} holds text, a comment or a processing instruction where none is allowed"
    )]
    UnexpectedContent { element: String },
    #[error("RIM: measurement resource {position}: attribute {attribute}: {detail}")]
    Measurement {
        position: usize,
        attribute: String,
        detail: String,
    },
    #[error("RIM: measurement index {index} appears twice")]
    DuplicateIndex { index: u16 },
    #[error("RIM: more than {max} measurement resources")]
    TooManyMeasurements { max: usize },
    #[error("RIM: {found} ds:Signature elements, expected exactly one")]
    SignatureCount { found: usize },
    #[error("RIM: the ds:Signature (in {parent}) is not the last element child of the root")]
    SignatureNotLast { parent: String },
    #[error("RIM: {element} Algorithm is {found:?}, expected {expected}")]
    Algorithm {
        element: String,
        found: String,
        expected: String,
    },
    #[error("RIM: the Reference URI is {found:?}, expected \"\" (the whole document)")]
    ReferenceUri { found: Option<String> },
    #[error(
        "RIM: the Reference transforms are {found:?}, expected [enveloped-signature, C14N 1.1]"
    )]
    Transforms { found: Vec<String> },
    #[error("RIM: {element} is not base64")]
    Base64 { element: String },
    #[error("RIM: {element} is {found} bytes, expected {expected}")]
    Length {
        element: String,
        found: usize,
        expected: usize,
    },
    #[error("RIM: {found} certificates in X509Data, at most {max}")]
    Certificates { found: usize, max: usize },
    #[error("RIM: cannot sign: {detail}")]
    Signing { detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimSignatureError {
    #[error(
        "RIM signature: the document's digest {computed} is not the signed DigestValue {expected}"
    )]
    DigestMismatch { expected: String, computed: String },
    #[error("RIM signature: the SignatureValue does not verify with the leaf certificate's key")]
    BadSignature,
    #[error("RIM signature: {detail}")]
    BadKey { detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimChainError {
    #[error("RIM signing chain: {found} certificates, expected at least leaf and root")]
    Length { found: usize },
    #[error("RIM signing chain: certificate {index}: {detail}")]
    Unreadable { index: usize, detail: String },
    #[error(
        "RIM signing chain: certificate {index} ({subject}) was not issued by the next one ({issuer})"
    )]
    Issuer {
        index: usize,
        subject: String,
        issuer: String,
    },
    #[error(
        "RIM signing chain: certificate {index} ({subject}): signature does not verify with the next certificate's key"
    )]
    Signature { index: usize, subject: String },
    #[error(
        "RIM signing chain: certificate {index} ({subject}) issues certificates but is not a CA"
    )]
    NotCa { index: usize, subject: String },
    #[error(
        "RIM signing chain: certificate {index} ({subject}) is not valid at {at} (valid {not_before} .. {not_after})"
    )]
    Validity {
        index: usize,
        subject: String,
        at: String,
        not_before: String,
        not_after: String,
    },
}

impl RimChainError {
    /// NVIDIA's `cert_status` "expired" (also for not yet valid); every other error is "invalid".
    pub fn is_expired(&self) -> bool {
        matches!(self, RimChainError::Validity { .. })
    }
}

#[cfg(test)]
mod rim_tests;
#[cfg(test)]
mod tamper_tests;
