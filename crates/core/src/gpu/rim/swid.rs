//! The RIM's content, ISO 19770-2 SWID: `SoftwareIdentity@tagId`, `Meta@colloquialVersion`
//! and the `Payload`'s measurement `Resource`s, read into typed values under a strict shape
//! (what NVIDIA's verifier calls "schema valid").

use std::collections::BTreeSet;

use roxmltree::Node;

use super::{RimError, RimMeasurement, dsig::DSIG_NS};

pub const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
/// The namespace of the `HashN` attributes: it names their algorithm.
pub const HASH_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
/// Real RIMs give at most 4 alternatives for one measurement.
pub const MAX_ALTERNATIVES: usize = 16;
/// SPDM has 254 measurement indexes; real RIMs have 64 resources.
pub const MAX_MEASUREMENTS: usize = 1024;

pub struct Content {
    pub tag_id: String,
    pub colloquial_version: String,
    pub measurements: Vec<RimMeasurement>,
}

pub fn content(root: Node<'_, '_>) -> Result<Content, RimError> {
    if root.tag_name().namespace() != Some(SWID_NS) || root.tag_name().name() != "SoftwareIdentity"
    {
        return Err(RimError::Root {
            found: root.tag_name().name().to_string(),
        });
    }
    let tag_id = required(root, "SoftwareIdentity", "tagId")?.to_string();

    let mut meta = None;
    let mut payload = None;
    for child in root.children().filter(Node::is_element) {
        let name = child.tag_name();
        match (name.namespace(), name.name()) {
            (Some(SWID_NS), "Entity") => {}
            (Some(SWID_NS), "Meta") => set_once(&mut meta, child, "Meta")?,
            (Some(SWID_NS), "Payload") => set_once(&mut payload, child, "Payload")?,
            // Its place and shape are the signature parser's (dsig.rs).
            (Some(DSIG_NS), "Signature") => {}
            _ => {
                return Err(RimError::UnexpectedElement {
                    parent: "SoftwareIdentity".into(),
                    found: name.name().to_string(),
                });
            }
        }
    }
    let meta = meta.ok_or(RimError::MissingElement {
        parent: "SoftwareIdentity".into(),
        element: "Meta".into(),
    })?;
    let payload = payload.ok_or(RimError::MissingElement {
        parent: "SoftwareIdentity".into(),
        element: "Payload".into(),
    })?;
    let colloquial_version = required(meta, "Meta", "colloquialVersion")?.to_string();

    let mut measurements = Vec::new();
    let mut indexes = BTreeSet::new();
    for resource in payload.children().filter(Node::is_element) {
        let name = resource.tag_name();
        if name.namespace() != Some(SWID_NS) || name.name() != "Resource" {
            return Err(RimError::UnexpectedElement {
                parent: "Payload".into(),
                found: name.name().to_string(),
            });
        }
        if measurements.len() >= MAX_MEASUREMENTS {
            return Err(RimError::TooManyMeasurements {
                max: MAX_MEASUREMENTS,
            });
        }
        let measurement = measurement(resource)?;
        if !indexes.insert(measurement.index) {
            return Err(RimError::DuplicateIndex {
                index: measurement.index,
            });
        }
        measurements.push(measurement);
    }
    if measurements.is_empty() {
        return Err(RimError::MissingElement {
            parent: "Payload".into(),
            element: "Resource".into(),
        });
    }
    Ok(Content {
        tag_id,
        colloquial_version,
        measurements,
    })
}

fn set_once<'a, 'i>(
    slot: &mut Option<Node<'a, 'i>>,
    node: Node<'a, 'i>,
    name: &str,
) -> Result<(), RimError> {
    if slot.replace(node).is_some() {
        return Err(RimError::DuplicateElement {
            parent: "SoftwareIdentity".into(),
            element: name.to_string(),
        });
    }
    Ok(())
}

fn required<'a>(node: Node<'a, '_>, element: &str, attribute: &str) -> Result<&'a str, RimError> {
    match node.attribute(attribute) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(RimError::MissingAttribute {
            element: element.to_string(),
            attribute: attribute.to_string(),
        }),
    }
}

fn bad(attribute: &str, position: usize, detail: impl Into<String>) -> RimError {
    RimError::Measurement {
        position,
        attribute: attribute.to_string(),
        detail: detail.into(),
    }
}

fn measurement(resource: Node<'_, '_>) -> Result<RimMeasurement, RimError> {
    // Position among the Payload's children, to name the resource before its index is known.
    let position = resource
        .prev_siblings()
        .filter(Node::is_element)
        .count()
        .saturating_sub(1);
    let get = |attribute: &str| {
        resource
            .attribute(attribute)
            .ok_or_else(|| bad(attribute, position, "missing"))
    };
    let kind = get("type")?;
    if kind != "Measurement" {
        return Err(bad(
            "type",
            position,
            format!("{kind:?}, expected \"Measurement\""),
        ));
    }
    let index = decimal(get("index")?)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| bad("index", position, "not a decimal number up to 65535"))?;
    let active = match get("active")? {
        "True" => true,
        "False" => false,
        other => {
            return Err(bad(
                "active",
                position,
                format!("{other:?}, expected \"True\" or \"False\""),
            ));
        }
    };
    let count = decimal(get("alternatives")?)
        .filter(|n| (1..=MAX_ALTERNATIVES as u64).contains(n))
        .ok_or_else(|| {
            bad(
                "alternatives",
                position,
                format!("not a number from 1 to {MAX_ALTERNATIVES}"),
            )
        })?;
    if get("size")? != "48" {
        return Err(bad("size", position, "expected \"48\" (SHA-384)"));
    }
    let name = get("name")?.to_string();

    let mut alternatives: Vec<Option<[u8; 48]>> = vec![None; usize::try_from(count).unwrap_or(0)];
    for attribute in resource.attributes() {
        match (attribute.namespace(), attribute.name()) {
            (None, "type" | "index" | "active" | "alternatives" | "size" | "name") => {}
            (Some(HASH_NS), local) => {
                let slot = local
                    .strip_prefix("Hash")
                    .and_then(decimal)
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| alternatives.get_mut(k))
                    .ok_or_else(|| bad(local, position, "not Hash0 .. Hash{alternatives-1}"))?;
                let mut digest = [0u8; 48];
                hex::decode_to_slice(attribute.value(), &mut digest)
                    .map_err(|_| bad(local, position, "not 96 hexadecimal digits"))?;
                *slot = Some(digest);
            }
            (_, local) => return Err(bad(local, position, "unexpected attribute")),
        }
    }
    let alternatives = alternatives
        .into_iter()
        .enumerate()
        .map(|(k, d)| d.ok_or_else(|| bad(&format!("Hash{k}"), position, "missing")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RimMeasurement {
        index,
        active,
        alternatives,
        name,
    })
}

/// A plain decimal number: digits only, no sign, no spaces, at most 9 digits.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
