//! A simulated NVIDIA GPU and its simulated NVIDIA PKI: a device chain shaped like a GH100's
//! or GB100's (five P-384 certificates, the leaf carrying a TCG DICE TcbInfo with the FWID),
//! SPDM measurement reports signed by the leaf, RIMs signed by a simulated RIM signer, and
//! OCSP answers from a simulated responder. Evidence made here verifies only against the
//! simulated roots (`--insecure-gpu-roots`), never against NVIDIA's.

use p384::ecdsa::SigningKey;
use p384::ecdsa::signature::Signer as _;
use p384::pkcs8::DecodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, SerialNumber,
};
use sha2::{Digest as _, Sha384};
use time::OffsetDateTime;

use super::SimError;
use tdx_core::gpu::{Architecture, opaque};

/// The validity of the simulated device chain: like NVIDIA's, from 2023 to the end of time.
const DEVICE_NOT_BEFORE: i64 = 1_672_531_200; // 2023-01-01
const DEVICE_NOT_AFTER: i64 = 253_402_300_799; // 9999-12-31T23:59:59
/// The simulated RIM and OCSP chains: 2024 to 2030 unless a test asks otherwise.
pub const SIM_RIM_NOT_BEFORE: i64 = 1_704_067_200; // 2024-01-01
pub const SIM_RIM_NOT_AFTER: i64 = 1_893_456_000; // 2030-01-01

const HOPPER_TCB_INFO: &[u64] = &[2, 23, 133, 5, 4, 1];
const BLACKWELL_TCB_INFO: &[u64] = &[2, 23, 133, 5, 4, 1, 1];

/// A P-384 key in both forms: rcgen's for certificates, p384's for raw signatures.
pub struct SimKey {
    rcgen: KeyPair,
    p384: SigningKey,
}

impl SimKey {
    fn generate() -> Result<Self, SimError> {
        let rcgen = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let p384 = SigningKey::from_pkcs8_der(&rcgen.serialize_der())
            .map_err(|e| SimError::Crypto(format!("P-384 key: {e}")))?;
        Ok(Self { rcgen, p384 })
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.p384
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "NVIDIA Corporation (simulated)");
    dn
}

fn at(unix: i64) -> Result<OffsetDateTime, SimError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| SimError::Crypto(e.to_string()))
}

fn ca_params(cn: &str, from: i64, to: i64, serial: u64) -> Result<CertificateParams, SimError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.use_authority_key_identifier_extension = true;
    p.not_before = at(from)?;
    p.not_after = at(to)?;
    p.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
    Ok(p)
}

fn leaf_params(cn: &str, from: i64, to: i64, serial: u64) -> Result<CertificateParams, SimError> {
    let mut p = ca_params(cn, from, to, serial)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// One certificate of a simulated chain: its DER and the key it certifies.
pub struct SimCert {
    pub der: Vec<u8>,
    pub key: SimKey,
    params: CertificateParams,
}

impl SimCert {
    fn self_signed(params: CertificateParams) -> Result<Self, SimError> {
        let key = SimKey::generate()?;
        let der = params.self_signed(&key.rcgen)?.der().to_vec();
        Ok(Self { der, key, params })
    }

    fn issued_by(params: CertificateParams, issuer: &SimCert) -> Result<Self, SimError> {
        let key = SimKey::generate()?;
        let iss = Issuer::new(issuer.params.clone(), &issuer.key.rcgen);
        let der = params.signed_by(&key.rcgen, &iss)?.der().to_vec();
        Ok(Self { der, key, params })
    }
}

/// DER of a DiceTcbInfo holding only `fwids = [sha384(fwid)]`, as NVIDIA's leaves carry it
/// (the digest is the extension's last 48 bytes, which is where Hopper's is read from).
fn tcb_info(fwid: &[u8; 48]) -> Vec<u8> {
    // OID 2.16.840.1.101.3.4.2.2 (SHA-384).
    let sha384_oid = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
    ];
    let mut fwid_seq = Vec::new();
    fwid_seq.extend_from_slice(&sha384_oid);
    fwid_seq.extend_from_slice(&[0x04, 48]);
    fwid_seq.extend_from_slice(fwid);
    let mut one = vec![0x30, u8::try_from(fwid_seq.len()).unwrap_or(0)];
    one.extend_from_slice(&fwid_seq);
    let mut fwids = vec![0xa6, u8::try_from(one.len()).unwrap_or(0)];
    fwids.extend_from_slice(&one);
    let mut vendor = vec![0x80, 6];
    vendor.extend_from_slice(b"NVIDIA");
    let mut body = vendor;
    body.extend_from_slice(&fwids);
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap_or(0)];
    out.extend_from_slice(&body);
    out
}

/// A simulated GPU's device PKI: root, identity, provisioner ICA, BROM, FMC leaf.
pub struct SimGpuPki {
    pub arch: Architecture,
    /// Leaf first, root last, as NVML returns it.
    pub chain: Vec<SimCert>,
    pub fwid: [u8; 48],
    /// The RIM signing chain: leaf, L3, CA, root.
    pub rim_chain: Vec<SimCert>,
    /// The OCSP responder, issued by the device root for the device chain's answers and by
    /// the RIM root for the RIM chains' (NVIDIA's responders chain to each root).
    pub device_responder: SimCert,
    pub rim_responder: SimCert,
}

impl SimGpuPki {
    /// A fresh PKI with random keys. `rim_leaf_not_after` bounds the RIM signer's validity
    /// (real ones last two years; tests move it to make a RIM expire).
    pub fn generate(arch: Architecture, rim_leaf_not_after: i64) -> Result<Self, SimError> {
        let chip = match arch {
            Architecture::Hopper => "GH100",
            Architecture::Blackwell => "GB100",
        };
        let fwid: [u8; 48] = Sha384::digest(rand_bytes()?).into();
        let (d0, d1) = (DEVICE_NOT_BEFORE, DEVICE_NOT_AFTER);
        let root = SimCert::self_signed(ca_params("NVIDIA Device Identity CA", d0, d1, 1)?)?;
        let identity = SimCert::issued_by(
            ca_params(&format!("NVIDIA {chip} Identity"), d0, d1, 2)?,
            &root,
        )?;
        let ica = SimCert::issued_by(
            ca_params(&format!("NVIDIA {chip} Provisioner ICA 1"), d0, d1, 3)?,
            &identity,
        )?;
        let brom =
            SimCert::issued_by(ca_params(&format!("{chip} A01 GSP BROM"), d0, d1, 4)?, &ica)?;
        let mut leaf = leaf_params(&format!("{chip} A01 GSP FMC LF"), d0, d1, 5)?;
        let oid = match arch {
            Architecture::Hopper => HOPPER_TCB_INFO,
            Architecture::Blackwell => BLACKWELL_TCB_INFO,
        };
        leaf.custom_extensions = vec![CustomExtension::from_oid_content(oid, tcb_info(&fwid))];
        let leaf = SimCert::issued_by(leaf, &brom)?;

        let (r0, r1) = (SIM_RIM_NOT_BEFORE, SIM_RIM_NOT_AFTER);
        let rim_root =
            SimCert::self_signed(ca_params("NVIDIA CoRIM signing Root CA", r0, r1, 11)?)?;
        let rim_ca = SimCert::issued_by(
            ca_params(&format!("NVIDIA Reference Value {chip} CA"), r0, r1, 12)?,
            &rim_root,
        )?;
        let rim_l3 = SimCert::issued_by(
            ca_params(&format!("NVIDIA Reference Value L3 {chip} 001"), r0, r1, 13)?,
            &rim_ca,
        )?;
        let rim_leaf = SimCert::issued_by(
            leaf_params("HCC RIM L4 Signer", r0, rim_leaf_not_after, 14)?,
            &rim_l3,
        )?;
        let responder = |cn: &str, serial, issuer: &SimCert| -> Result<SimCert, SimError> {
            let mut p = leaf_params(cn, r0, r1, serial)?;
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
            SimCert::issued_by(p, issuer)
        };
        let device_responder = responder("NVIDIA OCSP Responder (device, simulated)", 21, &root)?;
        let rim_responder = responder("NVIDIA OCSP Responder (RIM, simulated)", 22, &rim_root)?;
        Ok(Self {
            arch,
            chain: vec![leaf, brom, ica, identity, root],
            fwid,
            rim_chain: vec![rim_leaf, rim_l3, rim_ca, rim_root],
            device_responder,
            rim_responder,
        })
    }

    /// The chain as NVML returns it: concatenated PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem("CERTIFICATE", &c.der))
            .collect()
    }

    /// `--insecure-gpu-roots`: the device root, then the RIM root.
    pub fn roots_pem(&self) -> String {
        let device = self.chain.last().map(|c| pem("CERTIFICATE", &c.der));
        let rim = self.rim_chain.last().map(|c| pem("CERTIFICATE", &c.der));
        [device, rim].into_iter().flatten().collect()
    }

    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.der.clone()).collect()
    }

    pub fn rim_chain_der(&self) -> Vec<Vec<u8>> {
        self.rim_chain.iter().map(|c| c.der.clone()).collect()
    }

    fn leaf_key(&self) -> Result<&SigningKey, SimError> {
        self.chain
            .first()
            .map(|c| c.key.signing_key())
            .ok_or_else(|| SimError::Other("simulated GPU chain is empty".into()))
    }

    /// Sign `gpu`'s report over `nonce` with the leaf key.
    pub fn report(&self, gpu: &SimGpu, nonce: &[u8; 32]) -> Result<Vec<u8>, SimError> {
        let mut out = gpu.unsigned_report(nonce, self.fwid);
        let sig: p384::ecdsa::Signature = self.leaf_key()?.sign(&out);
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

fn rand_bytes() -> Result<[u8; 32], SimError> {
    use rand_core::RngCore as _;
    let mut b = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| SimError::Crypto(format!("random: {e}")))?;
    Ok(b)
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a simulated GPU reports: versions, board ids, its 64 measurements and its CC-mode
/// opaque fields. Every field is public so tests can make exactly the variant they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGpu {
    pub driver_version: String,
    /// As NVIDIA writes it, `96.00.9F.00.01`.
    pub vbios_version: String,
    pub project: String,
    pub project_sku: String,
    pub chip_sku: String,
    /// Blackwell's chip name (opaque field 35), e.g. `GB100`; absent on Hopper.
    pub chip_info: Option<String>,
    /// SPDM blocks 1..=64 (RIM index i is block i+1).
    pub measurements: Vec<[u8; 48]>,
    /// 0xAA enabled, 0x55 disabled.
    pub nvdec0: u8,
    /// 0 single GPU, 1 multi-GPU, 2 protected PCIe.
    pub feature_flag: u16,
    /// `None` leaves the FWID field out (as drivers before 550); `Some(None)` writes the
    /// PKI's leaf FWID; `Some(Some(x))` writes `x`.
    pub fwid: Option<Option<[u8; 48]>>,
}

impl SimGpu {
    /// A GPU like the real ones in tests/vectors/nvidia, with measurements derived from
    /// `label` so two labels give two different firmware states.
    pub fn typical(arch: Architecture, label: &str) -> Self {
        let measurements = (0u8..64)
            .map(|i| {
                let mut h = Sha384::new();
                h.update(b"tdx-agent simulated GPU measurement ");
                h.update(label.as_bytes());
                h.update([i]);
                h.finalize().into()
            })
            .collect();
        Self {
            driver_version: "595.71.05".into(),
            vbios_version: match arch {
                Architecture::Hopper => "96.00.88.00.11".into(),
                Architecture::Blackwell => "97.00.D9.00.35".into(),
            },
            project: match arch {
                Architecture::Hopper => "1010".into(),
                Architecture::Blackwell => "G525".into(),
            },
            project_sku: "0210".into(),
            chip_sku: "886".into(),
            chip_info: match arch {
                Architecture::Hopper => None,
                Architecture::Blackwell => Some("GB100".into()),
            },
            measurements,
            nvdec0: 0x55,
            feature_flag: 0,
            fwid: Some(None),
        }
    }

    /// The report's VBIOS field: bytes 3, 2, 1, 0, 4 are the version's five groups.
    fn vbios_field(&self) -> Vec<u8> {
        let g: Vec<u8> = self
            .vbios_version
            .split('.')
            .filter_map(|x| u8::from_str_radix(x, 16).ok())
            .collect();
        match g.as_slice() {
            [a, b, c, d, e] => vec![*d, *c, *b, *a, *e, 0, 0, 0],
            _ => vec![0; 8],
        }
    }

    fn opaque(&self, leaf_fwid: [u8; 48]) -> Vec<(u16, Vec<u8>)> {
        let padded = |s: &str, n: usize| {
            let mut v = s.as_bytes().to_vec();
            v.resize(n.max(v.len() + 1), 0);
            v
        };
        let mut f = vec![
            (opaque::VBIOS_VERSION, self.vbios_field()),
            (opaque::CHIP_SKU, padded(&self.chip_sku, 9)),
            (opaque::PROJECT, padded(&self.project, 5)),
            (opaque::PROJECT_SKU, padded(&self.project_sku, 5)),
            (opaque::DRIVER_VERSION, padded(&self.driver_version, 10)),
            (opaque::NVDEC0_STATUS, vec![self.nvdec0]),
        ];
        match self.fwid {
            None => {}
            Some(None) => f.push((opaque::FWID, leaf_fwid.to_vec())),
            Some(Some(x)) => f.push((opaque::FWID, x.to_vec())),
        }
        if let Some(chip) = &self.chip_info {
            f.push((opaque::CHIP_INFO, padded(chip, 6)));
        }
        f.push((opaque::OPAQUE_DATA_VERSION, vec![1, 0]));
        f.push((
            opaque::FEATURE_FLAG,
            self.feature_flag.to_le_bytes().to_vec(),
        ));
        f
    }

    /// Request and response up to the signature, in NVIDIA's layout (docs/design.md §14).
    fn unsigned_report(&self, nonce: &[u8; 32], leaf_fwid: [u8; 48]) -> Vec<u8> {
        let mut out = vec![0x11, 0xE0, 0x01, 0xFF];
        out.extend_from_slice(nonce);
        out.push(0);
        let mut record = Vec::new();
        for (i, m) in self.measurements.iter().enumerate() {
            // index, DMTF spec, size (3 + 48), value type, value size, digest.
            record.push(u8::try_from(i + 1).unwrap_or(u8::MAX));
            record.extend_from_slice(&[0x01, 51, 0, 0x01, 48, 0]);
            record.extend_from_slice(m);
        }
        out.extend_from_slice(&[0x11, 0x60, 0x00, 0x00]);
        out.push(u8::try_from(self.measurements.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&u32::try_from(record.len()).unwrap_or(0).to_le_bytes()[..3]);
        out.extend_from_slice(&record);
        out.extend_from_slice(&Sha384::digest(nonce)[..32]);
        let mut opaque_data = Vec::new();
        for (kind, value) in self.opaque(leaf_fwid) {
            opaque_data.extend_from_slice(&kind.to_le_bytes());
            opaque_data.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
            opaque_data.extend_from_slice(&value);
        }
        out.extend_from_slice(&u16::try_from(opaque_data.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&opaque_data);
        out
    }
}
