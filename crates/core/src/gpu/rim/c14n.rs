//! Inclusive Canonical XML 1.1 without comments (https://www.w3.org/TR/xml-c14n11/) over a
//! roxmltree document with no DTD: the whole document less one subtree (the enveloped
//! signature), or one element's subtree as a document subset (SignedInfo).
//!
//! What the parser already did and C14N relies on: line ends normalized to `\n`, attribute
//! values normalized (whitespace characters to spaces, character references resolved), entity
//! and character references and CDATA sections replaced by their text, the XML declaration
//! dropped. With no DTD there are no default attributes to add.

use std::collections::BTreeMap;

use roxmltree::{Document, Node, NodeId, NodeType};

use super::RimError;
use super::xml::{attribute_qname, element_qname};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Namespace declarations already rendered by output ancestors: prefix (`""` for the default)
/// to URI (`""` for an undeclared default). Borrowed from the document: every element copies
/// its parent's map, and owned strings made that up to 32 URIs of 4 KiB each per element.
type Rendered<'a> = BTreeMap<&'a str, &'a str>;

/// The canonical form of the whole document without `exclude` and its descendants, as the
/// enveloped-signature transform followed by C14N 1.1 produce it for `URI=""`.
pub fn document(
    text: &str,
    doc: &Document<'_>,
    exclude: Option<NodeId>,
) -> Result<Vec<u8>, RimError> {
    let mut out = Vec::with_capacity(text.len());
    let mut seen_root = false;
    for node in doc.root().children() {
        match node.node_type() {
            NodeType::Element => {
                seen_root = true;
                element(text, node, &Rendered::new(), &[], exclude, &mut out)?;
            }
            NodeType::PI => {
                // Outside the document element a PI is separated from it by one line feed.
                if seen_root {
                    out.push(b'\n');
                }
                pi(node, &mut out);
                if !seen_root {
                    out.push(b'\n');
                }
            }
            // Comments are removed; whitespace outside the document element is not content.
            NodeType::Comment | NodeType::Text | NodeType::Root => {}
        }
    }
    Ok(out)
}

/// The canonical form of the subtree at `apex` as a document subset: the namespaces in scope
/// at the apex and the `xml:lang` / `xml:space` it inherits (C14N 1.1 §2.4) are rendered on
/// it. `xml:base` on an ancestor would need the 1.1 fix-up, which RIMs never need: refused.
pub fn subtree(text: &str, apex: Node<'_, '_>) -> Result<Vec<u8>, RimError> {
    let mut inherited: Vec<(String, String)> = Vec::new();
    for ancestor in apex.ancestors().skip(1).filter(Node::is_element) {
        for attribute in ancestor.attributes() {
            if attribute.namespace() != Some(XML_NS) {
                continue;
            }
            match attribute.name() {
                "base" => {
                    return Err(RimError::XmlBase {
                        element: element_qname(text, ancestor)?.to_string(),
                    });
                }
                name @ ("lang" | "space") => {
                    let present = apex
                        .attributes()
                        .any(|a| a.namespace() == Some(XML_NS) && a.name() == name)
                        || inherited.iter().any(|(n, _)| n == name);
                    if !present {
                        inherited.push((name.to_string(), attribute.value().to_string()));
                    }
                }
                // xml:id and any other xml:* attribute are not inherited in C14N 1.1.
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    element(text, apex, &Rendered::new(), &inherited, None, &mut out)?;
    Ok(out)
}

/// One attribute to render: sorted by namespace URI (none first), then local name.
struct Attr<'a> {
    uri: &'a str,
    local: &'a str,
    qname: String,
    value: &'a str,
}

fn element<'a>(
    text: &str,
    node: Node<'a, '_>,
    rendered: &Rendered<'a>,
    inherited: &[(String, String)],
    exclude: Option<NodeId>,
    out: &mut Vec<u8>,
) -> Result<(), RimError> {
    let qname = element_qname(text, node)?;

    let mut in_scope = Rendered::new();
    for ns in node.namespaces() {
        in_scope.insert(ns.name().unwrap_or_default(), ns.uri());
    }
    // An element with no default namespace (or `xmlns=""`) under an output ancestor that
    // rendered a non-empty one must render `xmlns=""`.
    in_scope.entry("").or_default();
    let mut now = rendered.clone();
    let mut declarations: Vec<(&str, &str)> = Vec::new();
    for (&prefix, &uri) in &in_scope {
        let before = rendered.get(prefix).copied().unwrap_or_default();
        if before != uri {
            declarations.push((prefix, uri));
            now.insert(prefix, uri);
        }
    }

    let mut attributes: Vec<Attr<'_>> = Vec::new();
    for attribute in node.attributes() {
        attributes.push(Attr {
            uri: attribute.namespace().unwrap_or_default(),
            local: attribute.name(),
            qname: attribute_qname(text, &attribute)?.to_string(),
            value: attribute.value(),
        });
    }
    for (local, value) in inherited {
        attributes.push(Attr {
            uri: XML_NS,
            local,
            qname: format!("xml:{local}"),
            value,
        });
    }
    attributes.sort_by(|a, b| (a.uri, a.local).cmp(&(b.uri, b.local)));

    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());
    // BTreeMap order is by prefix with the default (`""`) first, as C14N requires.
    for (prefix, uri) in declarations {
        if prefix.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        escape_attribute(uri, out);
        out.push(b'"');
    }
    for attribute in &attributes {
        out.push(b' ');
        out.extend_from_slice(attribute.qname.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attribute(attribute.value, out);
        out.push(b'"');
    }
    out.push(b'>');

    for child in node.children() {
        if Some(child.id()) == exclude {
            continue;
        }
        match child.node_type() {
            // Depth is bounded by the parser's limit (xml::MAX_DEPTH), so recursion is too.
            NodeType::Element => element(text, child, &now, &[], exclude, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or_default(), out),
            NodeType::PI => pi(child, out),
            NodeType::Comment | NodeType::Root => {}
        }
    }

    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
    Ok(())
}

fn pi(node: Node<'_, '_>, out: &mut Vec<u8>) {
    if let Some(pi) = node.pi() {
        out.extend_from_slice(b"<?");
        out.extend_from_slice(pi.target.as_bytes());
        if let Some(value) = pi.value.filter(|v| !v.is_empty()) {
            out.push(b' ');
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"?>");
    }
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            _ => push_char(c, out),
        }
    }
}

fn escape_attribute(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            _ => push_char(c, out),
        }
    }
}

fn push_char(c: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}
