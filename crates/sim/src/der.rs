//! A tiny DER writer, just enough for Intel's SGX extension in the simulated PCK certificate.

/// Encode one TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub(crate) fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &items.concat())
}

pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

/// Minimal two's-complement encoding of a non-negative integer's content octets.
fn unsigned_content(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut content = bytes[skip..].to_vec();
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    content
}

pub(crate) fn integer(v: u64) -> Vec<u8> {
    tlv(0x02, &unsigned_content(v))
}

pub(crate) fn enumerated(v: u64) -> Vec<u8> {
    tlv(0x0a, &unsigned_content(v))
}

pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut push_base128 = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        content.extend_from_slice(&tmp);
    };
    match arcs {
        [a, b, rest @ ..] => {
            push_base128(a * 40 + b);
            for arc in rest {
                push_base128(*arc);
            }
        }
        [a] => push_base128(a * 40),
        [] => {}
    }
    tlv(0x06, &content)
}

/// OID arcs of Intel's SGX extension (1.2.840.113741.1.13.1).
pub const SGX_EXTENSION_OID: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];

/// The platform identity a PCK certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PckPlatform {
    pub ppid: [u8; 16],
    /// The 16 SGX TCB component SVNs; CPUSVN is the same bytes.
    pub cpu_svn: [u8; 16],
    pub pce_svn: u16,
    pub pce_id: [u8; 2],
    pub fmspc: [u8; 6],
}

fn sub_oid(suffix: &[u64]) -> Vec<u8> {
    let mut arcs = SGX_EXTENSION_OID.to_vec();
    arcs.extend_from_slice(suffix);
    oid(&arcs)
}

/// The extnValue content of the SGX extension: a SEQUENCE of {OID, value} pairs, the layout
/// dcap-qvl walks by OID (PPID, TCB with components/PCESVN/CPUSVN, PCE-ID, FMSPC, SGX type).
pub(crate) fn sgx_extension(p: &PckPlatform) -> Vec<u8> {
    let mut tcb: Vec<Vec<u8>> = p
        .cpu_svn
        .iter()
        .enumerate()
        .map(|(i, svn)| sequence(&[sub_oid(&[2, i as u64 + 1]), integer(u64::from(*svn))]))
        .collect();
    tcb.push(sequence(&[
        sub_oid(&[2, 17]),
        integer(u64::from(p.pce_svn)),
    ]));
    tcb.push(sequence(&[sub_oid(&[2, 18]), octet_string(&p.cpu_svn)]));
    sequence(&[
        sequence(&[sub_oid(&[1]), octet_string(&p.ppid)]),
        sequence(&[sub_oid(&[2]), sequence(&tcb)]),
        sequence(&[sub_oid(&[3]), octet_string(&p.pce_id)]),
        sequence(&[sub_oid(&[4]), octet_string(&p.fmspc)]),
        sequence(&[sub_oid(&[5]), enumerated(0)]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        assert_eq!(integer(0), [2, 1, 0]);
        assert_eq!(integer(127), [2, 1, 127]);
        assert_eq!(integer(128), [2, 2, 0, 128]);
        assert_eq!(integer(256), [2, 2, 1, 0]);
        assert_eq!(enumerated(0), [0x0a, 1, 0]);
        // 1.2.840.113741.1.13.1 as Intel's certificates encode it.
        assert_eq!(
            oid(SGX_EXTENSION_OID),
            hex::decode("06092a864886f84d010d01").unwrap()
        );
        let long = tlv(4, &[0u8; 300]);
        assert_eq!(&long[..4], &[4, 0x82, 1, 44]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn extension_parses_with_x509_parser_der() {
        let p = PckPlatform {
            ppid: [7; 16],
            cpu_svn: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 200],
            pce_svn: 13,
            pce_id: [0, 0],
            fmspc: [1, 2, 3, 4, 5, 6],
        };
        let ext = sgx_extension(&p);
        let (rest, obj) = x509_parser::der_parser::parse_der(&ext).unwrap();
        assert!(rest.is_empty());
        assert_eq!(obj.as_sequence().unwrap().len(), 5);
    }
}
