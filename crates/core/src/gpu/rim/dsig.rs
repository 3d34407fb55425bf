//! The RIM's enveloped XML signature: one `ds:Signature`, last child of the root, with exactly
//! NVIDIA's SignedInfo (C14N 1.1, ECDSA P-384 over SHA-384, one `URI=""` reference with the
//! enveloped-signature and C14N 1.1 transforms); its checks, and signing for simulators.

use base64::Engine as _;
use p384::ecdsa::signature::Signer as _;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use roxmltree::{Document, Node};
use sha2::{Digest as _, Sha384};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{RimError, RimSignatureError, c14n, xml};

pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
pub const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
/// What every real RIM names; the XML Encryption identifier means the same algorithm.
pub const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
pub const SHA384_XMLENC: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
/// Real RIMs carry 4 certificates (leaf, L3, CA, root).
pub const MAX_CERTIFICATES: usize = 8;

/// What the signature checks need, computed once at parse time.
#[derive(Clone)]
pub struct Parts {
    pub signed_info_c14n: Vec<u8>,
    pub digest_value: [u8; 48],
    pub computed_digest: [u8; 48],
    pub signature_value: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
}

/// The single `ds:Signature` of the document, if it is where it must be: the last element
/// child of the root. Any other element in the XMLDSig namespace outside it is refused, so
/// that no second (wrapped) signature or stray SignedInfo can exist.
pub fn find<'a, 'i>(doc: &'a Document<'i>) -> Result<Option<Node<'a, 'i>>, RimError> {
    let root = doc.root_element();
    let mut signature = None;
    let mut count = 0usize;
    for node in doc.descendants().filter(Node::is_element) {
        if node.tag_name().namespace() != Some(DSIG_NS) {
            continue;
        }
        if node.tag_name().name() == "Signature" {
            count += 1;
            signature = Some(node);
        } else if !node.ancestors().any(|a| {
            a.tag_name().namespace() == Some(DSIG_NS) && a.tag_name().name() == "Signature"
        }) {
            return Err(RimError::UnexpectedElement {
                parent: parent_name(node),
                found: node.tag_name().name().to_string(),
            });
        }
    }
    if count > 1 {
        return Err(RimError::SignatureCount { found: count });
    }
    if let Some(sig) = signature
        && (sig.parent() != Some(root) || sig.next_sibling_element().is_some())
    {
        return Err(RimError::SignatureNotLast {
            parent: parent_name(sig),
        });
    }
    Ok(signature)
}

fn parent_name(node: Node<'_, '_>) -> String {
    node.parent_element()
        .map(|p| p.tag_name().name().to_string())
        .unwrap_or_default()
}

pub fn parse(text: &str, doc: &Document<'_>) -> Result<Parts, RimError> {
    let signature = find(doc)?.ok_or(RimError::SignatureCount { found: 0 })?;
    let [signed_info, signature_value, key_info] = children(
        signature,
        "Signature",
        ["SignedInfo", "SignatureValue", "KeyInfo"],
    )?;

    let [c14n_method, signature_method, reference] = children(
        signed_info,
        "SignedInfo",
        ["CanonicalizationMethod", "SignatureMethod", "Reference"],
    )?;
    algorithm(c14n_method, "CanonicalizationMethod", &[C14N11])?;
    algorithm(signature_method, "SignatureMethod", &[ECDSA_SHA384])?;

    only_attributes(reference, "Reference", &["URI"])?;
    match reference.attribute("URI") {
        Some("") => {}
        found => {
            return Err(RimError::ReferenceUri {
                found: found.map(str::to_string),
            });
        }
    }
    let [transforms, digest_method, digest_value] = children(
        reference,
        "Reference",
        ["Transforms", "DigestMethod", "DigestValue"],
    )?;
    let [first, second] =
        children(transforms, "Transforms", ["Transform", "Transform"]).map_err(|_| {
            RimError::Transforms {
                found: transform_list(transforms),
            }
        })?;
    if algorithm(first, "Transform", &[ENVELOPED]).is_err()
        || algorithm(second, "Transform", &[C14N11]).is_err()
    {
        return Err(RimError::Transforms {
            found: transform_list(transforms),
        });
    }
    algorithm(digest_method, "DigestMethod", &[SHA384, SHA384_XMLENC])?;
    let digest_value: [u8; 48] = base64_text(digest_value, "DigestValue")?
        .try_into()
        .map_err(|v: Vec<u8>| RimError::Length {
            element: "DigestValue".into(),
            found: v.len(),
            expected: 48,
        })?;

    let raw = base64_text(signature_value, "SignatureValue")?;
    // XMLDSig 1.1 (RFC 4050 §3.3) gives r‖s; a DER signature is accepted and rewritten so.
    let signature_value = if raw.len() == 96 {
        raw
    } else {
        Signature::from_der(&raw)
            .map(|s| s.to_bytes().to_vec())
            .map_err(|_| RimError::Length {
                element: "SignatureValue".into(),
                found: raw.len(),
                expected: 96,
            })?
    };

    let [x509_data] = children(key_info, "KeyInfo", ["X509Data"])?;
    let mut chain = Vec::new();
    for cert in element_children(x509_data, "X509Data")? {
        if cert.tag_name().namespace() != Some(DSIG_NS)
            || cert.tag_name().name() != "X509Certificate"
        {
            return Err(RimError::UnexpectedElement {
                parent: "X509Data".into(),
                found: cert.tag_name().name().to_string(),
            });
        }
        if chain.len() >= MAX_CERTIFICATES {
            return Err(RimError::Certificates {
                found: element_children(x509_data, "X509Data")?.len(),
                max: MAX_CERTIFICATES,
            });
        }
        chain.push(base64_text(cert, "X509Certificate")?);
    }
    if chain.is_empty() {
        return Err(RimError::MissingElement {
            parent: "X509Data".into(),
            element: "X509Certificate".into(),
        });
    }

    let signed_info_c14n = c14n::subtree(text, signed_info)?;
    let computed_digest = Sha384::digest(c14n::document(text, doc, Some(signature.id()))?).into();
    Ok(Parts {
        signed_info_c14n,
        digest_value,
        computed_digest,
        signature_value,
        chain,
    })
}

/// The reference digest, then ECDSA P-384 over SHA-384 of the canonical SignedInfo with the
/// key of `leaf_der`.
pub fn verify(parts: &Parts, leaf_der: &[u8]) -> Result<(), RimSignatureError> {
    if parts.computed_digest != parts.digest_value {
        return Err(RimSignatureError::DigestMismatch {
            expected: hex::encode(parts.digest_value),
            computed: hex::encode(parts.computed_digest),
        });
    }
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| RimSignatureError::BadKey {
        detail: format!("leaf certificate: {e}"),
    })?;
    let key = VerifyingKey::from_sec1_bytes(&leaf.public_key().subject_public_key.data).map_err(
        |_| RimSignatureError::BadKey {
            detail: "the leaf certificate's key is not an ECDSA P-384 key".into(),
        },
    )?;
    let signature = Signature::from_slice(&parts.signature_value)
        .map_err(|_| RimSignatureError::BadSignature)?;
    if crate::gpu::p384_sha384::verifies(&key, &parts.signed_info_c14n, &signature) {
        Ok(())
    } else {
        Err(RimSignatureError::BadSignature)
    }
}

/// The element children of `node` in the XMLDSig namespace, exactly `names` in that order, with
/// nothing but whitespace between them.
fn children<'a, 'i, const N: usize>(
    node: Node<'a, 'i>,
    parent: &str,
    names: [&str; N],
) -> Result<[Node<'a, 'i>; N], RimError> {
    let found = element_children(node, parent)?;
    for (i, name) in names.iter().enumerate() {
        match found.get(i) {
            Some(child)
                if child.tag_name().namespace() == Some(DSIG_NS)
                    && child.tag_name().name() == *name => {}
            Some(child) => {
                return Err(RimError::UnexpectedElement {
                    parent: parent.to_string(),
                    found: child.tag_name().name().to_string(),
                });
            }
            None => {
                return Err(RimError::MissingElement {
                    parent: parent.to_string(),
                    element: (*name).to_string(),
                });
            }
        }
    }
    if let Some(extra) = found.get(N) {
        return Err(RimError::UnexpectedElement {
            parent: parent.to_string(),
            found: extra.tag_name().name().to_string(),
        });
    }
    found.try_into().map_err(|_| RimError::MissingElement {
        parent: parent.to_string(),
        element: names.join(", "),
    })
}

/// Element children; whitespace text between them is allowed (it is signed as it is), other
/// text, comments and processing instructions are not.
fn element_children<'a, 'i>(
    node: Node<'a, 'i>,
    parent: &str,
) -> Result<Vec<Node<'a, 'i>>, RimError> {
    let mut out = Vec::new();
    for child in node.children() {
        if child.is_element() {
            out.push(child);
        } else if !(child.is_text()
            && child
                .text()
                .unwrap_or_default()
                .bytes()
                .all(|b| b.is_ascii_whitespace()))
        {
            return Err(RimError::UnexpectedContent {
                element: parent.to_string(),
            });
        }
    }
    Ok(out)
}

fn only_attributes(node: Node<'_, '_>, element: &str, allowed: &[&str]) -> Result<(), RimError> {
    for attribute in node.attributes() {
        if attribute.namespace().is_some() || !allowed.contains(&attribute.name()) {
            return Err(RimError::UnexpectedAttribute {
                element: element.to_string(),
                attribute: attribute.name().to_string(),
            });
        }
    }
    Ok(())
}

fn algorithm(node: Node<'_, '_>, element: &str, expected: &[&str]) -> Result<(), RimError> {
    only_attributes(node, element, &["Algorithm"])?;
    if !element_children(node, element)?.is_empty() || node.children().any(|c| c.is_text()) {
        return Err(RimError::UnexpectedContent {
            element: element.to_string(),
        });
    }
    match node.attribute("Algorithm") {
        Some(found) if expected.contains(&found) => Ok(()),
        found => Err(RimError::Algorithm {
            element: element.to_string(),
            found: found.unwrap_or_default().to_string(),
            expected: expected.first().copied().unwrap_or_default().to_string(),
        }),
    }
}

fn transform_list(transforms: Node<'_, '_>) -> Vec<String> {
    transforms
        .children()
        .filter(Node::is_element)
        .map(|t| {
            t.attribute("Algorithm")
                .unwrap_or(t.tag_name().name())
                .to_string()
        })
        .collect()
}

fn base64_text(node: Node<'_, '_>, element: &str) -> Result<Vec<u8>, RimError> {
    if node.children().any(|c| !c.is_text()) {
        return Err(RimError::UnexpectedContent {
            element: element.to_string(),
        });
    }
    let compact: Vec<u8> = node
        .text()
        .unwrap_or_default()
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| RimError::Base64 {
            element: element.to_string(),
        })
}

/// Append to `unsigned_xml` (a RIM with no signature) a `ds:Signature` shaped as NVIDIA's, as
/// the last child of the root: the reference digest, the ECDSA P-384 signature over the
/// canonical SignedInfo by `signing_key`, and `chain_der` (leaf first) in `X509Data`.
pub fn sign(
    unsigned_xml: &[u8],
    signing_key: &SigningKey,
    chain_der: &[Vec<u8>],
) -> Result<Vec<u8>, RimError> {
    let (text, doc) = xml::parse(unsigned_xml)?;
    if find(&doc)?.is_some() {
        return Err(RimError::SignatureCount { found: 1 });
    }
    super::swid::content(doc.root_element())?;
    if chain_der.is_empty() || chain_der.len() > MAX_CERTIFICATES {
        return Err(RimError::Certificates {
            found: chain_der.len(),
            max: MAX_CERTIFICATES,
        });
    }
    let digest = Sha384::digest(c14n::document(text, &doc, None)?);
    // The signature goes right before the root's end tag, so the text around it, which the
    // enveloped transform keeps, is the unsigned document's.
    let root = doc.root_element();
    let insert_at = text
        .get(root.range())
        .and_then(|r| r.rfind("</"))
        .map(|i| root.range().start + i)
        .ok_or(RimError::Signing {
            detail: "the root element has no end tag".into(),
        })?;

    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut signature = String::new();
    signature.push_str(&format!(
        "<ds:Signature xmlns:ds=\"{DSIG_NS}\"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"{C14N11}\"/><ds:SignatureMethod Algorithm=\"{ECDSA_SHA384}\"/><ds:Reference URI=\"\"><ds:Transforms><ds:Transform Algorithm=\"{ENVELOPED}\"/><ds:Transform Algorithm=\"{C14N11}\"/></ds:Transforms><ds:DigestMethod Algorithm=\"{SHA384}\"/><ds:DigestValue>{}</ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue>",
        b64.encode(digest)
    ));
    let value_at = signature.len();
    signature.push_str("</ds:SignatureValue><ds:KeyInfo><ds:X509Data>");
    for der in chain_der {
        let encoded = b64.encode(der);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        // Each line ends in a newline, the last one too, as in NVIDIA's RIMs: NVIDIA's own
        // verifier wraps the element's text in PEM armour as it is.
        signature.push_str(&format!(
            "<ds:X509Certificate>{}\n</ds:X509Certificate>",
            lines.join("\n")
        ));
    }
    signature.push_str("</ds:X509Data></ds:KeyInfo></ds:Signature>");

    let (head, tail) = text.split_at_checked(insert_at).ok_or(RimError::Signing {
        detail: "the root element's end tag is not at a character boundary".into(),
    })?;
    let with_placeholder = format!("{head}{signature}{tail}");
    // SignedInfo is canonicalized in its place, with the namespaces in scope there.
    let signed_info_c14n = {
        let (t, d) = xml::parse(with_placeholder.as_bytes())?;
        let sig = find(&d)?.ok_or(RimError::SignatureCount { found: 0 })?;
        let signed_info = sig.first_element_child().ok_or(RimError::MissingElement {
            parent: "Signature".into(),
            element: "SignedInfo".into(),
        })?;
        c14n::subtree(t, signed_info)?
    };
    let value: Signature = signing_key.sign(&signed_info_c14n);
    signature.insert_str(value_at, &b64.encode(value.to_bytes()));
    Ok(format!("{head}{signature}{tail}").into_bytes())
}
