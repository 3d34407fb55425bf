//! The strict XML layer under the RIM parser: size, DTD, nesting, node-count and length limits
//! around roxmltree, and the qualified names as written, which canonicalization must reproduce.

use roxmltree::{Attribute, Document, Node, ParsingOptions};

use super::RimError;

/// A RIM is about 20 KiB; anything over 1 MiB is not one.
pub const MAX_DOCUMENT_LEN: usize = 1 << 20;
/// Real RIMs nest 5 deep (SoftwareIdentity/Signature/SignedInfo/Reference/Transforms/Transform).
pub const MAX_DEPTH: usize = 32;
/// The longest real attribute value is a 96-character digest or tag id.
pub const MAX_ATTRIBUTE_LEN: usize = 4096;
/// The longest real text is a base64 certificate (about 1 KiB).
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Real RIMs have about 400 nodes.
pub const MAX_NODES: u32 = 100_000;
/// Real elements have at most 16 attributes (namespace declarations not counted).
pub const MAX_ATTRIBUTES: usize = 64;
/// Real elements have at most 6 namespaces in scope. Canonicalization looks at every one on
/// every element, so thousands of declarations would make it quadratic.
pub const MAX_NAMESPACES: usize = 32;
/// Real RIMs declare 6 namespaces in all. roxmltree copies every namespace in scope into each
/// element that declares one, so a root with thousands of declarations and thousands of
/// children each declaring one more costs the product (GBs) before [`MAX_NAMESPACES`] can be
/// checked on the tree: the declarations are counted in the text before parsing.
pub const MAX_NAMESPACE_DECLARATIONS: usize = 256;

/// Parse `xml` under the limits: no DTD (so no entity declarations, internal or external),
/// only the five predefined entities and character references, bounded size, depth and lengths.
pub fn parse(xml: &[u8]) -> Result<(&str, Document<'_>), RimError> {
    if xml.len() > MAX_DOCUMENT_LEN {
        return Err(RimError::TooLarge {
            len: xml.len(),
            max: MAX_DOCUMENT_LEN,
        });
    }
    let text = std::str::from_utf8(xml).map_err(|e| RimError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // roxmltree refuses a DTD with `allow_dtd: false` too; this names it before any parsing.
    if text.contains("<!DOCTYPE") {
        return Err(RimError::Doctype);
    }
    // Every declaration's attribute name starts with `xmlns` and names cannot be escaped, so
    // this over-counts (text, comments) but never under-counts.
    if text
        .matches("xmlns")
        .nth(MAX_NAMESPACE_DECLARATIONS)
        .is_some()
    {
        return Err(RimError::TooManyNamespaceDeclarations {
            max: MAX_NAMESPACE_DECLARATIONS,
        });
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => RimError::Doctype,
        roxmltree::Error::NodesLimitReached => RimError::TooManyNodes { max: MAX_NODES },
        other => RimError::Xml {
            detail: other.to_string(),
        },
    })?;
    check_limits(text, &doc)?;
    Ok((text, doc))
}

fn check_limits(text: &str, doc: &Document<'_>) -> Result<(), RimError> {
    for node in doc.descendants() {
        if node.is_element() {
            // `ancestors` starts at the node itself and ends at the document node.
            let depth = node
                .ancestors()
                .take(MAX_DEPTH + 2)
                .count()
                .saturating_sub(1);
            if depth > MAX_DEPTH {
                return Err(RimError::TooDeep { max: MAX_DEPTH });
            }
            let element = element_qname(text, node)?;
            let attributes = node.attributes();
            if attributes.len() > MAX_ATTRIBUTES {
                return Err(RimError::TooManyAttributes {
                    element: element.to_string(),
                    max: MAX_ATTRIBUTES,
                });
            }
            for attribute in attributes {
                let name = attribute_qname(text, &attribute)?;
                if attribute.value().len() > MAX_ATTRIBUTE_LEN {
                    return Err(RimError::AttributeTooLong {
                        element: element.to_string(),
                        attribute: name.to_string(),
                        max: MAX_ATTRIBUTE_LEN,
                    });
                }
            }
            if node.namespaces().len() > MAX_NAMESPACES {
                return Err(RimError::TooManyNamespaces {
                    element: element.to_string(),
                    max: MAX_NAMESPACES,
                });
            }
            for ns in node.namespaces() {
                if ns.uri().len() > MAX_ATTRIBUTE_LEN {
                    return Err(RimError::AttributeTooLong {
                        element: element.to_string(),
                        attribute: format!("xmlns:{}", ns.name().unwrap_or_default()),
                        max: MAX_ATTRIBUTE_LEN,
                    });
                }
            }
        } else if let Some(t) = node.text()
            && t.len() > MAX_TEXT_LEN
        {
            return Err(RimError::TextTooLong { max: MAX_TEXT_LEN });
        }
    }
    Ok(())
}

/// The element's name as written (`ns0:Payload`), which the tree only gives resolved.
pub fn element_qname<'a>(text: &'a str, node: Node<'_, '_>) -> Result<&'a str, RimError> {
    let local = node.tag_name().name();
    let range = node.range();
    let qname = text
        .get(range.start.saturating_add(1)..range.end)
        .and_then(|rest| {
            rest.split(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
                .next()
        })
        .unwrap_or_default();
    if qname_matches(qname, local) {
        Ok(qname)
    } else {
        Err(RimError::Xml {
            detail: format!("cannot read the name of element {local}"),
        })
    }
}

/// The attribute's name as written (`ns2:Hash0`): two prefixes may name one namespace (real
/// RIMs bind `ns2` and `SHA384` to the same URI), and C14N keeps the one the document used.
pub fn attribute_qname<'a>(
    text: &'a str,
    attribute: &Attribute<'_, '_>,
) -> Result<&'a str, RimError> {
    let local = attribute.name();
    let qname = text.get(attribute.range_qname()).unwrap_or_default();
    if qname_matches(qname, local) {
        Ok(qname)
    } else {
        Err(RimError::Xml {
            detail: format!("cannot read the name of attribute {local}"),
        })
    }
}

fn qname_matches(qname: &str, local: &str) -> bool {
    match qname.split_once(':') {
        Some((prefix, rest)) => !prefix.is_empty() && rest == local,
        None => qname == local && !local.is_empty(),
    }
}
