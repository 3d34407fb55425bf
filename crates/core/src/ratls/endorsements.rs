//! The collateral stapled into the certificate (OID 2.23.133.5.4.2), in the layout rats-tls
//! reads, so a client verifies the handshake with no PCCS access.
//!
//! extnValue = `tag 60000([version, tcb_info, tcb_info_issuer_chain, pck_crl, root_ca_crl,
//! pck_crl_issuer_chain, qe_identity, qe_identity_issuer_chain, creation_time])`. The version
//! is a uint always written 32 bits wide; every other item is a byte string holding what
//! DCAP's collateral structure holds: the full signed JSON bodies (`{"tcbInfo":…,
//! "signature":"hex"}`), PEM issuer chains, PEM CRLs, decimal creation time, each text with a
//! trailing NUL.

use base64::Engine as _;

use super::cbor::{self, Value};
use super::{CBOR_TAG_RATLS, RaTlsError};
use crate::verify::Collateral;

pub const ENDORSEMENTS_OID: &[u64] = &[2, 23, 133, 5, 4, 2];
/// The collateral structure version rats-tls writes for TDX (major 1, minor 3).
pub const ENDORSEMENTS_VERSION: u32 = 0x0001_0003;

const CRL_BEGIN: &str = "-----BEGIN X509 CRL-----";
const CRL_END: &str = "-----END X509 CRL-----";

/// The decoded extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endorsements {
    pub version: u32,
    pub collateral: Collateral,
    /// Unix seconds, when the stapling stack recorded one.
    pub creation_time: Option<i64>,
}

/// The extnValue bytes for `c`, stamped with `creation_time` (unix seconds).
pub fn encode(c: &Collateral, creation_time: i64) -> Vec<u8> {
    let items = [
        signed_body("tcbInfo", &c.tcb_info, &c.tcb_info_signature),
        nul_text(&c.tcb_info_issuer_chain),
        nul_text(&crl_pem(&c.pck_crl)),
        nul_text(&crl_pem(&c.root_ca_crl)),
        nul_text(&c.pck_crl_issuer_chain),
        signed_body("enclaveIdentity", &c.qe_identity, &c.qe_identity_signature),
        nul_text(&c.qe_identity_issuer_chain),
        nul_text(&creation_time.to_string()),
    ];
    let mut array = vec![Value::Uint32(ENDORSEMENTS_VERSION)];
    array.extend(items.into_iter().map(Value::Bytes));
    cbor::encode(&Value::Tag(CBOR_TAG_RATLS, Box::new(Value::Array(array))))
}

/// Read the extension another stack (or we) wrote.
pub fn decode(bytes: &[u8]) -> Result<Endorsements, RaTlsError> {
    let bad = |d: String| RaTlsError::Endorsements(d);
    let inner = Value::decode_tagged(bytes, CBOR_TAG_RATLS).map_err(bad)?;
    let items = inner
        .as_array()
        .ok_or_else(|| bad(format!("tag {CBOR_TAG_RATLS} holds a {}", inner.kind())))?;
    let [version, rest @ ..] = items else {
        return Err(bad("empty array".into()));
    };
    let version = version
        .as_uint()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("the version is not a 32-bit unsigned integer".into()))?;
    let names = [
        "tcb_info",
        "tcb_info_issuer_chain",
        "pck_crl",
        "root_ca_crl",
        "pck_crl_issuer_chain",
        "qe_identity",
        "qe_identity_issuer_chain",
        "creation_time",
    ];
    if rest.len() != names.len() {
        return Err(bad(format!(
            "{} items after the version, expected {}",
            rest.len(),
            names.len()
        )));
    }
    let mut raw: [&[u8]; 8] = [&[]; 8];
    for ((slot, item), name) in raw.iter_mut().zip(rest).zip(names) {
        *slot = item.as_bytes().ok_or_else(|| {
            bad(format!(
                "{name} is a {}, expected a byte string",
                item.kind()
            ))
        })?;
    }
    let [
        tcb_body,
        tcb_chain,
        pck_crl,
        root_crl,
        pck_chain,
        qe_body,
        qe_chain,
        created,
    ] = raw;
    let (tcb_info, tcb_info_signature) = read_signed_body(tcb_body, "tcb_info", "tcbInfo")?;
    let (qe_identity, qe_identity_signature) =
        read_signed_body(qe_body, "qe_identity", "enclaveIdentity")?;
    let created = text(created, "creation_time")?;
    let creation_time = match created.trim() {
        "" => None,
        t => Some(
            t.parse::<i64>()
                .map_err(|_| bad(format!("creation_time {t:?} is not decimal unix seconds")))?,
        ),
    };
    let collateral = Collateral {
        pck_crl_issuer_chain: chain(pck_chain, "pck_crl_issuer_chain")?,
        root_ca_crl: crl(root_crl, "root_ca_crl")?,
        pck_crl: crl(pck_crl, "pck_crl")?,
        tcb_info_issuer_chain: chain(tcb_chain, "tcb_info_issuer_chain")?,
        tcb_info,
        tcb_info_signature,
        qe_identity_issuer_chain: chain(qe_chain, "qe_identity_issuer_chain")?,
        qe_identity,
        qe_identity_signature,
    };
    Ok(Endorsements {
        version,
        collateral,
        creation_time,
    })
}

fn nul_text(s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.len() + 1);
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    b
}

/// The body as Intel's PCS serves it; the signed text goes in unchanged, so the signature
/// still covers exactly it.
fn signed_body(key: &str, signed: &str, signature: &[u8]) -> Vec<u8> {
    nul_text(&format!(
        "{{\"{key}\":{signed},\"signature\":\"{}\"}}",
        hex::encode(signature)
    ))
}

fn crl_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str(CRL_BEGIN);
    out.push('\n');
    // 64 columns, as PEM (RFC 7468) writers do; base64 is ASCII so byte chunks are chars.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(CRL_END);
    out.push('\n');
    out
}

/// Text without the one trailing NUL that DCAP's structure counts in the size.
fn text<'a>(item: &'a [u8], name: &str) -> Result<&'a str, RaTlsError> {
    let body = item.strip_suffix(&[0]).unwrap_or(item);
    std::str::from_utf8(body)
        .map_err(|_| RaTlsError::Endorsements(format!("{name} is not UTF-8 text")))
}

fn chain(item: &[u8], name: &str) -> Result<String, RaTlsError> {
    let t = text(item, name)?;
    crate::quote::pem_certificates(t.as_bytes())
        .map_err(|e| RaTlsError::Endorsements(format!("{name}: {e}")))?;
    Ok(t.to_string())
}

/// The exact signed text and signature out of a stapled signed body.
fn read_signed_body(item: &[u8], name: &str, key: &str) -> Result<(String, Vec<u8>), RaTlsError> {
    crate::verify::collateral::split_signed_body(text(item, name)?, key)
        .map_err(|d| RaTlsError::Endorsements(format!("{name}: {d}")))
}

/// A CRL as any stack staples it: PEM, hex text of the DER (what a PCCS serves), or raw DER.
fn crl(item: &[u8], name: &str) -> Result<Vec<u8>, RaTlsError> {
    let bad = |d: String| RaTlsError::Endorsements(format!("{name}: {d}"));
    let as_text = std::str::from_utf8(item.strip_suffix(&[0]).unwrap_or(item))
        .ok()
        .map(str::trim);
    if let Some(t) = as_text {
        if let Some(after) = t.strip_prefix(CRL_BEGIN) {
            let end = after
                .find(CRL_END)
                .ok_or_else(|| bad("PEM CRL without an END line".into()))?;
            let b64: String = after[..end].split_whitespace().collect();
            return base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| bad(format!("PEM CRL is not base64: {e}")));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex::decode(t).map_err(|e| bad(format!("hex CRL: {e}")));
        }
    }
    // Raw DER: its own length says where it ends, so a NUL after it (or none) is told apart
    // from a final zero byte of the signature.
    let len = der_len(item)
        .ok_or_else(|| bad("neither a PEM CRL, hex text, nor a DER SEQUENCE".into()))?;
    match &item[len..] {
        [] | [0] => Ok(item[..len].to_vec()),
        rest => Err(bad(format!("{} bytes after the DER CRL", rest.len()))),
    }
}

/// Total length of the DER SEQUENCE at the start of `b`, if it fits in `b`.
fn der_len(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = b.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    (total <= b.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdx_sim::{SimFixture, SimSettings};

    /// The simulated PKI's collateral. The simulator links the library build of this crate,
    /// so its `Collateral` crosses into these unit tests as the bundle JSON.
    fn sim_collateral() -> Collateral {
        let tmp = tempfile::tempdir().unwrap();
        let fx = SimFixture::create(tmp.path(), SimSettings::default()).unwrap();
        let c = fx
            .collateral(crate::verify::time::now_unix() as u64)
            .unwrap();
        Collateral::from_bundle_json(&c.to_bundle_json(), "simulated PKI").unwrap()
    }

    fn items(bytes: &[u8]) -> Vec<Value> {
        let v = cbor::decode(bytes).unwrap();
        v.untag(CBOR_TAG_RATLS)
            .unwrap()
            .as_array()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn round_trips_losslessly_in_the_rats_tls_layout() {
        let c = sim_collateral();
        let bytes = encode(&c, 1_751_328_000);
        // Tag 60000, array of 9, version 32 bits wide.
        assert_eq!(
            &bytes[..9],
            &[0xd9, 0xea, 0x60, 0x89, 0x1a, 0x00, 0x01, 0x00, 0x03]
        );
        let e = decode(&bytes).unwrap();
        assert_eq!(e.collateral, c);
        assert_eq!(e.version, ENDORSEMENTS_VERSION);
        assert_eq!(e.creation_time, Some(1_751_328_000));

        let items = items(&bytes);
        assert_eq!(items.len(), 9);
        for item in &items[1..] {
            let b = item.as_bytes().unwrap();
            assert_eq!(b.last(), Some(&0), "items end in NUL");
            assert!(std::str::from_utf8(b).is_ok());
        }
        let tcb = std::str::from_utf8(items[1].as_bytes().unwrap()).unwrap();
        assert!(tcb.starts_with("{\"tcbInfo\":{"), "{tcb}");
        assert!(tcb.contains(&c.tcb_info));
        assert!(tcb.contains(&format!(
            "\"signature\":\"{}\"",
            hex::encode(&c.tcb_info_signature)
        )));
        let qe = std::str::from_utf8(items[6].as_bytes().unwrap()).unwrap();
        assert!(qe.starts_with("{\"enclaveIdentity\":{"), "{qe}");
        for i in [3, 4] {
            let crl = std::str::from_utf8(items[i].as_bytes().unwrap()).unwrap();
            assert!(crl.starts_with("-----BEGIN X509 CRL-----\n"), "{crl}");
        }
        assert_eq!(items[8].as_bytes().unwrap(), b"1751328000\0");
        // What it decodes to is collateral dcap-qvl can use.
        e.collateral.prepare().unwrap();
    }

    #[test]
    fn reads_crls_as_pem_hex_or_der_and_signed_bodies_with_whitespace() {
        let c = sim_collateral();
        let mut v = items(&encode(&c, 1));
        v[3] = Value::Bytes(nul_text(&hex::encode(&c.pck_crl)));
        v[4] = Value::Bytes(c.root_ca_crl.clone());
        // Intel serves the body pretty-printed sometimes; only the signed member's text counts.
        v[1] = Value::Bytes(
            format!(
                "{{ \"signature\" : \"{}\",\n  \"tcbInfo\" : {} }}",
                hex::encode(&c.tcb_info_signature),
                c.tcb_info
            )
            .into_bytes(),
        );
        let bytes = cbor::encode(&Value::Tag(CBOR_TAG_RATLS, Box::new(Value::Array(v))));
        assert_eq!(decode(&bytes).unwrap().collateral, c);
    }

    #[test]
    fn der_crl_ending_in_zero_is_kept_whole() {
        // A DER SEQUENCE whose last content byte is 0: no NUL may be stripped from it.
        let der = [0x30, 0x03, 0x02, 0x01, 0x00];
        assert_eq!(crl(&der, "x").unwrap(), der);
        let mut with_nul = der.to_vec();
        with_nul.push(0);
        assert_eq!(crl(&with_nul, "x").unwrap(), der);
        with_nul.push(0);
        assert!(crl(&with_nul, "x").is_err());
    }

    #[test]
    fn malformed_endorsements_are_named() {
        let c = sim_collateral();
        let good = items(&encode(&c, 1));
        let cases: Vec<(Vec<Value>, &str)> = vec![
            (good[..8].to_vec(), "7 items"),
            (
                {
                    let mut v = good.clone();
                    v[0] = Value::Uint(1 << 40);
                    v
                },
                "version",
            ),
            (
                {
                    let mut v = good.clone();
                    v[2] = Value::Text("x".into());
                    v
                },
                "tcb_info_issuer_chain is a text string",
            ),
            (
                {
                    let mut v = good.clone();
                    v[1] = Value::Bytes(b"{\"signature\":\"00\"}".to_vec());
                    v
                },
                "no \"tcbInfo\"",
            ),
            (
                {
                    let mut v = good.clone();
                    v[3] = Value::Bytes(b"garbage".to_vec());
                    v
                },
                "pck_crl",
            ),
            (
                {
                    let mut v = good.clone();
                    v[8] = Value::Bytes(b"soon\0".to_vec());
                    v
                },
                "creation_time",
            ),
        ];
        for (v, needle) in cases {
            let bytes = cbor::encode(&Value::Tag(CBOR_TAG_RATLS, Box::new(Value::Array(v))));
            let err = decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
