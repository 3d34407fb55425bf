//! Hostile RIMs: tampered signed content, moved or extra signatures, DTDs, entities, deep
//! nesting, oversized input, wrong algorithms; each a named error, none a panic. Also the
//! changes C14N must see through (line ends, character references, quotes, empty elements).

use proptest::prelude::*;

use super::rim_tests::{DRIVER_550, rim_bytes};
use super::*;

fn real() -> String {
    String::from_utf8(rim_bytes(DRIVER_550)).unwrap()
}

/// `real()` with the first `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> Vec<u8> {
    let text = real();
    assert!(text.contains(from), "{from}");
    text.replacen(from, to, 1).into_bytes()
}

fn signature_element(text: &str) -> &str {
    let start = text.find("<ds:Signature").unwrap();
    let end = text.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    &text[start..end]
}

fn parse_err(xml: &[u8]) -> RimError {
    Rim::parse(xml).unwrap_err()
}

fn signature_err(xml: &[u8]) -> RimSignatureError {
    Rim::parse(xml).unwrap().verify_signature().unwrap_err()
}

const HASH7: &str = "80161aac5e7509f038a6457b111e048207d1dc0e78edbb8c172fca4139c1d5f29cda67ecdd261fdc9203b76387f7389f";

#[test]
fn a_changed_hash_breaks_the_digest() {
    let tampered = edit(HASH7, &HASH7.replacen("8016", "9016", 1));
    assert!(matches!(
        signature_err(&tampered),
        RimSignatureError::DigestMismatch { .. }
    ));
    // So does a measurement switched off.
    let inactive = edit(
        "index=\"7\" active=\"True\"",
        "index=\"7\" active=\"False\"",
    );
    assert!(matches!(
        signature_err(&inactive),
        RimSignatureError::DigestMismatch { .. }
    ));
}

#[test]
fn a_changed_signature_value_fails() {
    let tampered = edit("<ds:SignatureValue>uA3a", "<ds:SignatureValue>vA3a");
    assert_eq!(signature_err(&tampered), RimSignatureError::BadSignature);
    // r = 0 is not a signature at all.
    let zero = {
        let text = real();
        let start = text.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
        let end = text.find("</ds:SignatureValue>").unwrap();
        format!("{}{}{}", &text[..start], "A".repeat(128), &text[end..]).into_bytes()
    };
    assert_eq!(signature_err(&zero), RimSignatureError::BadSignature);
    let short = edit("<ds:SignatureValue>uA3a", "<ds:SignatureValue>");
    assert!(matches!(
        parse_err(&short),
        RimError::Base64 { .. } | RimError::Length { .. }
    ));
}

#[test]
fn a_second_or_moved_signature_is_refused() {
    let text = real();
    let sig = signature_element(&text);
    let twice = text.replacen(sig, &format!("{sig}{sig}"), 1);
    assert_eq!(
        parse_err(twice.as_bytes()),
        RimError::SignatureCount { found: 2 }
    );

    let without = text.replacen(sig, "", 1);
    assert_eq!(
        parse_err(without.as_bytes()),
        RimError::SignatureCount { found: 0 }
    );

    let in_payload = without.replacen("</ns0:Payload>", &format!("{sig}</ns0:Payload>"), 1);
    assert_eq!(
        parse_err(in_payload.as_bytes()),
        RimError::SignatureNotLast {
            parent: "Payload".into()
        }
    );
    let first = without.replacen("<ns0:Entity", &format!("{sig}<ns0:Entity"), 1);
    assert_eq!(
        parse_err(first.as_bytes()),
        RimError::SignatureNotLast {
            parent: "SoftwareIdentity".into()
        }
    );
    // A stray SignedInfo (a wrapping attack's decoy) anywhere outside the signature.
    let decoy = text.replacen(
        "</ns0:Payload>",
        "<ds:SignedInfo xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/></ns0:Payload>",
        1,
    );
    assert!(matches!(
        parse_err(decoy.as_bytes()),
        RimError::UnexpectedElement { found, .. } if found == "SignedInfo"
    ));
}

#[test]
fn dtds_and_entities_are_refused() {
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">]><lolz>&lol2;</lolz>";
    assert_eq!(parse_err(laughs.as_bytes()), RimError::Doctype);
    let external = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><x>&xxe;</x>";
    assert_eq!(parse_err(external.as_bytes()), RimError::Doctype);
    // A real RIM with a DTD put in front.
    let with_dtd = format!("<!DOCTYPE SoftwareIdentity [<!ENTITY v \"1\">]>{}", real());
    assert_eq!(parse_err(with_dtd.as_bytes()), RimError::Doctype);
    // An entity that nothing declares.
    let undeclared = edit("name=\"Measurement_7\"", "name=\"&xxe;\"");
    assert!(matches!(parse_err(&undeclared), RimError::Xml { .. }));
}

#[test]
fn oversized_input_is_refused() {
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    assert_eq!(
        parse_err(deep.as_bytes()),
        RimError::TooDeep { max: MAX_DEPTH }
    );
    let large = format!("{}<!-- {} -->", real(), "x".repeat(2 << 20));
    assert!(matches!(
        parse_err(large.as_bytes()),
        RimError::TooLarge { .. }
    ));
    let long_attribute = edit(
        "edition=\"GPU\"",
        &format!("edition=\"{}\"", "G".repeat(100_000)),
    );
    assert!(matches!(
        parse_err(&long_attribute),
        RimError::AttributeTooLong { attribute, .. } if attribute == "edition"
    ));
    // Few enough declarations for the document, too many in scope on one element.
    let declarations: String = (0..40)
        .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
        .collect();
    let many_namespaces = edit(
        "<SoftwareIdentity ",
        &format!("<SoftwareIdentity{declarations} "),
    );
    assert!(matches!(
        parse_err(&many_namespaces),
        RimError::TooManyNamespaces { element, .. } if element == "SoftwareIdentity"
    ));
    assert!(matches!(
        parse_err(&[0xff, 0xfe, b'<']),
        RimError::NotUtf8 { offset: 0 }
    ));
}

#[test]
fn namespace_floods_are_refused_before_the_parser_sees_them() {
    // 20,000 declarations on the root and 20,000 children declaring one more each, under
    // MAX_DOCUMENT_LEN: roxmltree would copy the root's scope into every child (about 4e8
    // entries, each checked against those before it) before any limit on the tree applied.
    // Only the count in the text gives this error, so the parser never ran.
    let n = 20_000;
    let root_declarations: String = (0..n).map(|i| format!(" xmlns:n{i}=\"u\"")).collect();
    let children: String = (0..n).map(|i| format!("<c xmlns:m{i}=\"u\"/>")).collect();
    let flood = format!("<SoftwareIdentity{root_declarations}>{children}</SoftwareIdentity>");
    assert!(flood.len() <= MAX_DOCUMENT_LEN, "{}", flood.len());
    assert_eq!(
        parse_err(flood.as_bytes()),
        RimError::TooManyNamespaceDeclarations {
            max: MAX_NAMESPACE_DECLARATIONS
        }
    );
    // One past the limit is refused, the limit itself is left to the per-element checks.
    let at_limit = |count: usize| {
        let children: String = (0..count)
            .map(|i| format!("<c xmlns:m{i}=\"u\"/>"))
            .collect();
        edit(
            "</SoftwareIdentity>",
            &format!("<Extra>{children}</Extra></SoftwareIdentity>"),
        )
    };
    let real_declarations = real().matches("xmlns").count();
    assert!(matches!(
        parse_err(&at_limit(
            MAX_NAMESPACE_DECLARATIONS + 1 - real_declarations
        )),
        RimError::TooManyNamespaceDeclarations { .. }
    ));
    assert!(!matches!(
        parse_err(&at_limit(MAX_NAMESPACE_DECLARATIONS - real_declarations)),
        RimError::TooManyNamespaceDeclarations { .. }
    ));
}

#[test]
fn comments_in_signed_content_are_not_signed_whitespace_is() {
    // The URI="" reference is canonicalized without comments, so a comment changes nothing.
    let comment = edit(
        "<ns0:Resource type=\"Measurement\" index=\"7\"",
        "<!-- any text --><ns0:Resource type=\"Measurement\" index=\"7\"",
    );
    let rim = Rim::parse(&comment).unwrap();
    assert_eq!(rim.verify_signature(), Ok(()));
    // Whitespace text is content.
    let spaced = edit(
        "<ns0:Resource type=\"Measurement\" index=\"7\"",
        " <ns0:Resource type=\"Measurement\" index=\"7\"",
    );
    assert!(matches!(
        signature_err(&spaced),
        RimSignatureError::DigestMismatch { .. }
    ));
    // A comment inside the signature itself is refused outright.
    let in_signed_info = edit("<ds:SignedInfo>", "<ds:SignedInfo><!-- x -->");
    assert_eq!(
        parse_err(&in_signed_info),
        RimError::UnexpectedContent {
            element: "SignedInfo".into()
        }
    );
}

#[test]
fn what_canonicalization_removes_does_not_break_the_signature() {
    for (what, xml) in [
        ("CRLF line ends", real().replace('\n', "\r\n").into_bytes()),
        (
            "a character reference",
            edit("name=\"Measurement_7\"", "name=\"&#x4D;easurement_7\""),
        ),
        ("single quotes", edit("corpus=\"false\"", "corpus='false'")),
        (
            "an end tag for an empty element",
            edit(
                "role=\"softwareCreator tagCreator\"/>",
                "role=\"softwareCreator tagCreator\"></ns0:Entity>",
            ),
        ),
        (
            "attributes reordered",
            edit(
                "corpus=\"false\" name=\"GH100\"",
                "name=\"GH100\" corpus=\"false\"",
            ),
        ),
        (
            "an XML declaration",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}", real()).into_bytes(),
        ),
        (
            "a redundant namespace declaration",
            edit(
                "<ns0:Payload ",
                "<ns0:Payload xmlns:ns0=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\" ",
            ),
        ),
    ] {
        let rim = Rim::parse(&xml).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(rim.verify_signature(), Ok(()), "{what}");
    }
}

/// An edit of the real RIM (from, to) and the error it must give.
type Case = (&'static str, &'static str, fn(&RimError) -> bool);

#[test]
fn the_reference_and_algorithms_are_exactly_nvidias() {
    let cases: [Case; 9] = [
        (
            "<ds:Reference URI=\"\">",
            "<ds:Reference URI=\"#payload\">",
            |e| matches!(e, RimError::ReferenceUri { found: Some(u) } if u == "#payload"),
        ),
        ("<ds:Reference URI=\"\">", "<ds:Reference>", |e| {
            matches!(e, RimError::ReferenceUri { found: None })
        }),
        (
            "<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/><ds:Transform Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/>",
            "<ds:Transform Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/><ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>",
            |e| matches!(e, RimError::Transforms { .. }),
        ),
        (
            "<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>",
            "",
            |e| matches!(e, RimError::Transforms { .. }),
        ),
        (
            "<ds:Transform Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/></ds:Transforms>",
            "<ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/></ds:Transforms>",
            |e| matches!(e, RimError::Transforms { .. }),
        ),
        (
            "<ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2006/12/xml-c14n11\"/>",
            "<ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments\"/>",
            |e| matches!(e, RimError::Algorithm { element, .. } if element == "CanonicalizationMethod"),
        ),
        (
            "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
            "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            |e| matches!(e, RimError::Algorithm { element, .. } if element == "SignatureMethod"),
        ),
        (
            "<ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#sha384\"/>",
            "<ds:DigestMethod Algorithm=\"http://www.w3.org/2000/09/xmldsig#sha1\"/>",
            |e| matches!(e, RimError::Algorithm { element, .. } if element == "DigestMethod"),
        ),
        (
            "</ds:SignedInfo>",
            "<ds:Reference URI=\"\"/></ds:SignedInfo>",
            |e| matches!(e, RimError::UnexpectedElement { parent, .. } if parent == "SignedInfo"),
        ),
    ];
    for (from, to, expected) in cases {
        let err = parse_err(&edit(from, to));
        assert!(expected(&err), "{to}: {err:?}");
    }
}

#[test]
fn malformed_measurements_are_named() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "index=\"7\" active=\"True\"",
            "index=\"7\" active=\"yes\"",
            "active",
        ),
        ("index=\"7\" active", "index=\"x7\" active", "index"),
        (
            "index=\"7\" active=\"True\" alternatives=\"1\"",
            "index=\"7\" active=\"True\" alternatives=\"2\"",
            "Hash1",
        ),
        (HASH7, "80161aac", "Hash0"),
        (
            "name=\"Measurement_7\" size=\"48\"",
            "name=\"Measurement_7\" size=\"32\"",
            "size",
        ),
        (
            "name=\"Measurement_7\"",
            "name=\"Measurement_7\" extra=\"1\"",
            "extra",
        ),
    ];
    for (from, to, attribute) in cases {
        match parse_err(&edit(from, to)) {
            RimError::Measurement {
                position: 7,
                attribute: a,
                ..
            } if a == attribute => {}
            other => panic!("{to}: {other:?}"),
        }
    }
    assert_eq!(
        parse_err(&edit("index=\"8\"", "index=\"7\"")),
        RimError::DuplicateIndex { index: 7 }
    );
    assert_eq!(
        parse_err(&edit("colloquialVersion=\"550.90.07\"", "")),
        RimError::MissingAttribute {
            element: "Meta".into(),
            attribute: "colloquialVersion".into()
        }
    );
    assert!(matches!(
        parse_err(&edit(
            "<SoftwareIdentity xmlns=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\"",
            "<SoftwareIdentity xmlns=\"urn:other\""
        )),
        RimError::Root { .. }
    ));
}

fn exercise(xml: &[u8]) {
    if let Ok(rim) = Rim::parse(xml) {
        let _ = rim.verify_signature();
        let _ = rim.verify_chain(&rim.signing_chain()[0], 0);
    }
    let _ = canonicalize_for_signing(xml);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn mutations_of_a_real_rim_never_panic(
        edits in proptest::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(b"<>&\"'=/:!? ax0#;\n-[]".to_vec())),
            1..6,
        ),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut xml = rim_bytes(DRIVER_550);
        for (at, byte) in edits {
            let i = at.index(xml.len());
            xml[i] = byte;
        }
        if truncate {
            xml.truncate(cut.index(xml.len()));
        }
        exercise(&xml);
    }
}
