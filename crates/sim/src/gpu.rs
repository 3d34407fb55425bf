//! A simulated NVIDIA GPU and its simulated NVIDIA PKI: a device chain shaped like a GH100's
//! or GB100's (five P-384 certificates, the leaf carrying a TCG DICE TcbInfo with the FWID),
//! SPDM measurement reports signed by the leaf, RIMs signed by a simulated RIM signer, and
//! OCSP answers signed by each certificate's issuer. Evidence made here verifies only against the
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

    fn from_pem(path: &std::path::Path, pem: &str) -> Result<Self, SimError> {
        let rcgen = KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_ECDSA_P384_SHA384)
            .map_err(|e| SimError::malformed(path, format!("not a P-384 PKCS#8 key: {e}")))?;
        let p384 = SigningKey::from_pkcs8_der(&rcgen.serialize_der())
            .map_err(|e| SimError::malformed(path, format!("not a P-384 PKCS#8 key: {e}")))?;
        Ok(Self { rcgen, p384 })
    }

    /// The key for raw P-384 signatures (reports, RIMs, OCSP answers).
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
    /// What issued certificates need of their issuer; `None` once loaded from disk (a
    /// loaded PKI signs reports, RIMs and OCSP answers but issues no new certificate).
    params: Option<CertificateParams>,
}

impl SimCert {
    fn self_signed(params: CertificateParams) -> Result<Self, SimError> {
        let key = SimKey::generate()?;
        let der = params.self_signed(&key.rcgen)?.der().to_vec();
        Ok(Self {
            der,
            key,
            params: Some(params),
        })
    }

    fn issued_by(params: CertificateParams, issuer: &SimCert) -> Result<Self, SimError> {
        Self::issued_by_with_key(params, issuer, SimKey::generate()?)
    }

    fn issued_by_with_key(
        params: CertificateParams,
        issuer: &SimCert,
        key: SimKey,
    ) -> Result<Self, SimError> {
        let issuer_params = issuer.params.clone().ok_or_else(|| {
            SimError::Other("a simulated PKI loaded from disk issues no certificates".into())
        })?;
        let iss = Issuer::new(issuer_params, &issuer.key.rcgen);
        let der = params.signed_by(&key.rcgen, &iss)?.der().to_vec();
        Ok(Self {
            der,
            key,
            params: Some(params),
        })
    }
}

/// SHA-384's OID, 2.16.840.1.101.3.4.2.2.
const SHA384_OID: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];

/// The leaf's TCG DICE TcbInfo as each architecture's real leaves carry it (the shapes of the
/// vectors' GH100 and GB20X leaves), since NVIDIA's verifier parses them positionally.
/// Hopper: SEQUENCE { version 1, the leaf's SubjectPublicKeyInfo, FWID }, the digest last.
/// Blackwell: DiceTcbInfo { vendor, model, version, svn, layer, index, fwids [FWID, zeros],
/// flags, vendorInfo, type }.
fn tcb_info(arch: Architecture, chip: &str, leaf_spki: &[u8], fwid: &[u8; 48]) -> Vec<u8> {
    use super::der::{integer, octet_string, oid, sequence, tlv};
    let fwid_entry = |d: &[u8]| sequence(&[oid(SHA384_OID), octet_string(d)]);
    match arch {
        Architecture::Hopper => sequence(&[integer(1), leaf_spki.to_vec(), fwid_entry(fwid)]),
        Architecture::Blackwell => {
            let fwids = [fwid_entry(fwid), fwid_entry(&[0; 48])].concat();
            sequence(&[
                tlv(0x80, b"NVIDIA"),
                tlv(0x81, format!("{chip} A01 GSP").as_bytes()),
                tlv(0x82, b"02"),
                tlv(0x83, &[0x02]),
                tlv(0x84, &[0x00]),
                tlv(0x85, &[0x00]),
                tlv(0xA6, &fwids),
                tlv(0x87, &[0x00, 0x80, 0x00, 0x00, 0x01]),
                tlv(0x88, &[0xC0]),
                tlv(0x89, &[0x00]),
            ])
        }
    }
}

/// A simulated GPU's device PKI: root, identity, provisioner ICA, BROM, FMC leaf.
pub struct SimGpuPki {
    pub arch: Architecture,
    /// Leaf first, root last, as NVML returns it.
    pub chain: Vec<SimCert>,
    pub fwid: [u8; 48],
    /// The RIM signing chain: leaf, L3, CA, root.
    pub rim_chain: Vec<SimCert>,
}

impl SimGpuPki {
    /// A fresh PKI with random keys. `rim_leaf_not_after` bounds the RIM signer's validity
    /// (real ones last two years; tests move it to make a RIM expire).
    pub fn generate(arch: Architecture, rim_leaf_not_after: i64) -> Result<Self, SimError> {
        Self::generate_inner(arch, rim_leaf_not_after, None)
    }

    /// [`SimGpuPki::generate`], except that device-chain certificate `index` (1 BROM, 2
    /// provisioner ICA, 3 identity) is an end-entity certificate that still issues the one
    /// below it, with basicConstraints CA:FALSE or, with `omit_basic_constraints`, none: the
    /// chain an NVIDIA end-entity key could make, which verifiers must refuse (NVIDIA's
    /// issuers are all CA:TRUE). A test knob.
    pub fn generate_with_non_ca_issuer(
        arch: Architecture,
        rim_leaf_not_after: i64,
        index: usize,
        omit_basic_constraints: bool,
    ) -> Result<Self, SimError> {
        if !(1..=3).contains(&index) {
            return Err(SimError::Other(format!(
                "device chain certificate {index} is not an intermediate (1..=3)"
            )));
        }
        Self::generate_inner(
            arch,
            rim_leaf_not_after,
            Some((index, omit_basic_constraints)),
        )
    }

    fn generate_inner(
        arch: Architecture,
        rim_leaf_not_after: i64,
        non_ca: Option<(usize, bool)>,
    ) -> Result<Self, SimError> {
        // Device chain index `i`'s parameters, made an end-entity's where the knob says so.
        let device_ca = |cn: &str, i: usize, serial: u64| -> Result<CertificateParams, SimError> {
            let mut p = ca_params(cn, DEVICE_NOT_BEFORE, DEVICE_NOT_AFTER, serial)?;
            if let Some((index, omit)) = non_ca
                && index == i
            {
                p.is_ca = if omit { IsCa::NoCa } else { IsCa::ExplicitNoCa };
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }
            Ok(p)
        };
        let chip = match arch {
            Architecture::Hopper => "GH100",
            Architecture::Blackwell => "GB100",
        };
        let fwid: [u8; 48] = Sha384::digest(rand_bytes()?).into();
        let (d0, d1) = (DEVICE_NOT_BEFORE, DEVICE_NOT_AFTER);
        let root = SimCert::self_signed(ca_params("NVIDIA Device Identity CA", d0, d1, 1)?)?;
        let identity =
            SimCert::issued_by(device_ca(&format!("NVIDIA {chip} Identity"), 3, 2)?, &root)?;
        let ica = SimCert::issued_by(
            device_ca(&format!("NVIDIA {chip} Provisioner ICA 1"), 2, 3)?,
            &identity,
        )?;
        let brom = SimCert::issued_by(device_ca(&format!("{chip} A01 GSP BROM"), 1, 4)?, &ica)?;
        let mut leaf = leaf_params(&format!("{chip} A01 GSP FMC LF"), d0, d1, 5)?;
        let oid = match arch {
            Architecture::Hopper => HOPPER_TCB_INFO,
            Architecture::Blackwell => BLACKWELL_TCB_INFO,
        };
        // The leaf's key comes first: Hopper's TcbInfo repeats it.
        let leaf_key = SimKey::generate()?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&leaf_key.rcgen);
        leaf.custom_extensions = vec![CustomExtension::from_oid_content(
            oid,
            tcb_info(arch, chip, &spki, &fwid),
        )];
        let leaf = SimCert::issued_by_with_key(leaf, &brom, leaf_key)?;

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
        Ok(Self {
            arch,
            chain: vec![leaf, brom, ica, identity, root],
            fwid,
            rim_chain: vec![rim_leaf, rim_l3, rim_ca, rim_root],
        })
    }

    /// Write the PKI to `dir` (`device-N.der`/`.key`, `rim-N.der`/`.key`, `fwid.hex`,
    /// `arch`), each file atomically.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), SimError> {
        use crate::fsio;
        fsio::create_dir_all(dir)?;
        for (prefix, certs) in [("device", &self.chain), ("rim", &self.rim_chain)] {
            for (i, c) in certs.iter().enumerate() {
                fsio::write_atomic(&dir.join(format!("{prefix}-{i}.der")), &c.der)?;
                fsio::write_atomic(
                    &dir.join(format!("{prefix}-{i}.key")),
                    c.key.rcgen.serialize_pem().as_bytes(),
                )?;
            }
        }
        fsio::write_atomic(&dir.join("fwid.hex"), hex::encode(self.fwid).as_bytes())?;
        fsio::write_atomic(&dir.join("arch"), self.arch.to_string().as_bytes())?;
        Ok(())
    }

    /// The PKI [`Self::save`] wrote.
    pub fn load(dir: &std::path::Path) -> Result<Self, SimError> {
        use crate::fsio;
        let load_certs = |prefix: &str, n: usize| -> Result<Vec<SimCert>, SimError> {
            (0..n)
                .map(|i| {
                    let key_path = dir.join(format!("{prefix}-{i}.key"));
                    let key = SimKey::from_pem(&key_path, &fsio::read_string(&key_path)?)?;
                    let der = fsio::read(&dir.join(format!("{prefix}-{i}.der")))?;
                    Ok(SimCert {
                        der,
                        key,
                        params: None,
                    })
                })
                .collect()
        };
        let fwid_path = dir.join("fwid.hex");
        let fwid = tdx_core::encoding::hex_array::<48>(fsio::read_string(&fwid_path)?.trim())
            .map_err(|e| SimError::malformed(&fwid_path, e))?;
        let arch_path = dir.join("arch");
        let arch = match fsio::read_string(&arch_path)?.trim() {
            "hopper" => Architecture::Hopper,
            "blackwell" => Architecture::Blackwell,
            other => {
                return Err(SimError::malformed(
                    &arch_path,
                    format!("{other:?} is not hopper or blackwell"),
                ));
            }
        };
        Ok(Self {
            arch,
            chain: load_certs("device", 5)?,
            fwid,
            rim_chain: load_certs("rim", 4)?,
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

/// Which RIM indices each RIM covers in the simulation, as NVIDIA splits them: the VBIOS RIM
/// the firmware's (0-6, 8-20), the driver RIM index 7 and 21-40; 41-63 are inactive in both.
pub fn sim_rim_active(kind: SimRimKind, index: u16) -> bool {
    match kind {
        SimRimKind::Driver => index == 7 || (21..=40).contains(&index),
        SimRimKind::Vbios => index <= 20 && index != 7,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimRimKind {
    Driver,
    Vbios,
}

/// One RIM entry: index, whether it is compared, and its alternatives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRimEntry {
    pub index: u16,
    pub active: bool,
    pub alternatives: Vec<[u8; 48]>,
}

/// A RIM before signing, in NVIDIA's SWID shape; tests edit `entries` and `version` to make
/// the variant they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRim {
    pub kind: SimRimKind,
    pub product: String,
    pub version: String,
    pub entries: Vec<SimRimEntry>,
}

impl SimGpu {
    /// The RIM of `kind` that this GPU's measurements match.
    pub fn rim(&self, kind: SimRimKind, arch: Architecture) -> SimRim {
        let entries = self
            .measurements
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                let active = sim_rim_active(kind, index);
                SimRimEntry {
                    index,
                    active,
                    alternatives: vec![if active { *m } else { [0; 48] }],
                }
            })
            .collect();
        SimRim {
            kind,
            product: match arch {
                Architecture::Hopper => "GH100".into(),
                Architecture::Blackwell => "GB100".into(),
            },
            version: match kind {
                SimRimKind::Driver => self.driver_version.clone(),
                SimRimKind::Vbios => self.vbios_version.clone(),
            },
            entries,
        }
    }
}

impl SimRim {
    /// The unsigned document, laid out as NVIDIA's are (namespace prefixes, attribute order,
    /// self-closing elements, indentation), so canonicalization has real work to do.
    pub fn unsigned_xml(&self) -> String {
        let mut x = String::new();
        let tag: [u8; 48] = Sha384::digest(format!("{}{:?}", self.version, self.kind)).into();
        x.push_str(&format!(
            "<SoftwareIdentity xmlns=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\" \
             xmlns:ns0=\"http://standards.iso.org/iso/19770/-2/2015/schema.xsd\" \
             xmlns:ns2=\"http://www.w3.org/2001/04/xmlenc#sha384\" corpus=\"false\" name=\"{p}\" \
             patch=\"false\" supplemental=\"false\" tagId=\"{t}\" version=\"1.0\" tagVersion=\"0\">\n",
            p = self.product,
            t = hex::encode(tag),
        ));
        x.push_str(
            "    <ns0:Entity name=\"NVIDIA Corporation (simulated)\" role=\"softwareCreator tagCreator\"/>\n",
        );
        x.push_str(&format!(
            "    <ns0:Meta xmlns:ns1=\"https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/\" \
             colloquialVersion=\"{v}\" edition=\"GPU\" product=\"{p}\" revision=\"r1\" PayloadType=\"direct\" \
             ns1:BindingSpec=\"RIMIM\" ns1:BindingSpecVersion=\"1.01\" ns1:PlatformManufacturerId=\"5703\" \
             ns1:PlatformManufacturerStr=\"NVIDIA Corporation\" ns1:PlatformModel=\"{p}\" \
             ns1:FirmwareManufacturer=\"NVIDIA Corporation\" ns1:FirmwareManufacturerId=\"5703\"/>\n",
            v = self.version,
            p = self.product,
        ));
        x.push_str("    <ns0:Payload xmlns:SHA384=\"http://www.w3.org/2001/04/xmlenc#sha384\">\n");
        for e in &self.entries {
            let hashes: String = e
                .alternatives
                .iter()
                .enumerate()
                .map(|(j, h)| format!(" ns2:Hash{j}=\"{}\"", hex::encode(h)))
                .collect();
            x.push_str(&format!(
                "        <ns0:Resource type=\"Measurement\" index=\"{i}\" active=\"{a}\" alternatives=\"{n}\"{hashes} name=\"Measurement_{i}\" size=\"48\"/>\n",
                i = e.index,
                a = if e.active { "True" } else { "False" },
                n = e.alternatives.len(),
            ));
        }
        x.push_str("    </ns0:Payload>\n</SoftwareIdentity>\n");
        x
    }
}

impl SimGpuPki {
    /// Sign `rim` as NVIDIA does: an enveloped XML signature by the RIM signer, with the
    /// signing chain (leaf to root) in `ds:X509Data`.
    pub fn sign_rim(&self, rim: &SimRim) -> Result<Vec<u8>, SimError> {
        let key = self
            .rim_chain
            .first()
            .map(|c| c.key.signing_key())
            .ok_or_else(|| SimError::Other("simulated RIM chain is empty".into()))?;
        tdx_core::gpu::rim::sign_rim(rim.unsigned_xml().as_bytes(), key, &self.rim_chain_der())
            .map_err(|e| SimError::Crypto(format!("signing the simulated RIM: {e}")))
    }
}

/// What the simulated responder says about a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOcspStatus {
    Good,
    Revoked,
    /// certificateHold: never accepted.
    Hold,
}

/// What a [`SimOcspSpec`] answer says about its certificate, in full: a test picks the
/// revocation time and reason, or an unknown status, that [`SimOcspStatus`] fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimCertStatus {
    /// Not revoked: the only status a verifier accepts.
    Good,
    /// Revoked at `time` (Unix seconds) for the RFC 5280 CRLReason `reason`, if given;
    /// reason 6 is certificateHold.
    Revoked { time: i64, reason: Option<u8> },
    /// The responder does not know the certificate.
    Unknown,
}

/// The hash naming the certificate in a [`SimOcspSpec`] answer's CertID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOcspHash {
    /// Which verifiers must accept too (RFC 6960 allows any).
    Sha256,
    /// As NVIDIA's responder writes it.
    Sha384,
}

/// Who signs a [`SimOcspSpec`] answer.
#[derive(Clone, Copy)]
pub enum SimOcspResponder<'a> {
    /// The certificate's issuer itself (RFC 6960 §4.2.2.2, first case), as
    /// [`SimGpuPki::ocsp_answer`] signs.
    Issuer,
    /// A fresh end-entity responder certificate, stapled in the answer, issued by `by` (the
    /// certificate's issuer when `None`; another PKI's certificate makes a foreign responder),
    /// with id-kp-OCSPSigning only when `ocsp_signing`, valid until `not_after`.
    Delegated {
        by: Option<&'a SimCert>,
        ocsp_signing: bool,
        not_after: i64,
    },
    /// `cert_der` stapled as the responder but `key` signing: a pair that need not match.
    Signer { cert_der: &'a [u8], key: &'a SimKey },
}

/// Every field of a simulated OCSP answer, for [`SimGpuPki::ocsp_answer_with`]; start from
/// [`SimOcspSpec::good`] and change what the test is about.
#[derive(Clone, Copy)]
pub struct SimOcspSpec<'a> {
    /// The certificate answered for: device chain 1..=3 or RIM chain 0..=2 of the PKI.
    pub cert_der: &'a [u8],
    /// The issuer whose name and key the CertID hashes; the certificate's own when `None`
    /// (another makes an answer about a different certificate with the same serial).
    pub cert_id_issuer_der: Option<&'a [u8]>,
    /// The CertID's hash.
    pub hash: SimOcspHash,
    /// The certStatus.
    pub status: SimCertStatus,
    /// producedAt, Unix seconds.
    pub produced_at: i64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds; `None` leaves it out.
    pub next_update: Option<i64>,
    /// Who signs.
    pub responder: SimOcspResponder<'a>,
}

impl<'a> SimOcspSpec<'a> {
    /// What [`SimGpuPki::ocsp_answer`] writes for a good certificate: SHA-384 CertID, produced
    /// and updated `at`, next update a day later, signed by the issuer.
    pub fn good(cert_der: &'a [u8], at: i64) -> Self {
        Self {
            cert_der,
            cert_id_issuer_der: None,
            hash: SimOcspHash::Sha384,
            status: SimCertStatus::Good,
            produced_at: at,
            this_update: at,
            next_update: Some(at.saturating_add(86_400)),
            responder: SimOcspResponder::Issuer,
        }
    }
}

/// A delegated OCSP responder's certificate, issued by `issuer`.
fn ocsp_responder(
    issuer: &SimCert,
    ocsp_signing: bool,
    not_after: i64,
) -> Result<SimCert, SimError> {
    // A day of validity at least, so that a responder made to have expired long ago still
    // has a well-formed validity.
    let not_before = SIM_RIM_NOT_BEFORE.min(not_after.saturating_sub(86_400));
    let mut p = leaf_params("NVIDIA OCSP Responder", not_before, not_after, 21)?;
    if ocsp_signing {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
    }
    SimCert::issued_by(p, issuer)
}

impl SimGpuPki {
    /// Every (certificate, issuer) pair NVIDIA's verifier asks about: device chain 1..3 and
    /// RIM chain 0..2.
    fn ocsp_pairs(&self) -> Vec<(&SimCert, &SimCert)> {
        fn pairs(c: &[SimCert], range: std::ops::Range<usize>) -> Vec<(&SimCert, &SimCert)> {
            range
                .filter_map(|i| Some((c.get(i)?, c.get(i + 1)?)))
                .collect()
        }
        let mut out = pairs(&self.chain, 1..4);
        out.extend(pairs(&self.rim_chain, 0..3));
        out
    }

    /// A stapleable answer (no nonce) about `cert_der`, signed by its issuer: thisUpdate `at`,
    /// nextUpdate a day later, as NVIDIA's responder writes them.
    pub fn ocsp_answer(
        &self,
        cert_der: &[u8],
        status: SimOcspStatus,
        at: i64,
    ) -> Result<Vec<u8>, SimError> {
        self.ocsp_answer_until(cert_der, status, at, Some(at + 86_400))
    }

    /// As [`Self::ocsp_answer`], with the nextUpdate given (NVIDIA's responder may omit it).
    pub fn ocsp_answer_until(
        &self,
        cert_der: &[u8],
        status: SimOcspStatus,
        at: i64,
        next_update: Option<i64>,
    ) -> Result<Vec<u8>, SimError> {
        let status = match status {
            SimOcspStatus::Good => SimCertStatus::Good,
            SimOcspStatus::Revoked => SimCertStatus::Revoked {
                time: at - 3600,
                reason: Some(1),
            },
            SimOcspStatus::Hold => SimCertStatus::Revoked {
                time: at - 3600,
                reason: Some(tdx_core::gpu::ocsp::CRL_REASON_CERTIFICATE_HOLD),
            },
        };
        self.ocsp_answer_with(&SimOcspSpec {
            status,
            next_update,
            ..SimOcspSpec::good(cert_der, at)
        })
    }

    /// The answer `spec` describes, about one of this PKI's certificates (device chain 1..=3
    /// or RIM chain 0..=2): any status, times, CertID and signer, for tests of what a verifier
    /// must refuse.
    pub fn ocsp_answer_with(&self, spec: &SimOcspSpec<'_>) -> Result<Vec<u8>, SimError> {
        use tdx_core::gpu::ocsp::{CertStatus, OcspHash, OcspResponseSpec, build_ocsp_response};
        let (cert, issuer) = self
            .ocsp_pairs()
            .into_iter()
            .find(|(c, _)| c.der == spec.cert_der)
            .ok_or_else(|| SimError::Other("no simulated certificate has that DER".into()))?;
        // Declared out here so that the delegate the match makes outlives the borrows of it.
        let delegate;
        let (responder_cert_der, responder_key) = match spec.responder {
            SimOcspResponder::Issuer => (issuer.der.as_slice(), issuer.key.signing_key()),
            SimOcspResponder::Signer { cert_der, key } => (cert_der, key.signing_key()),
            SimOcspResponder::Delegated {
                by,
                ocsp_signing,
                not_after,
            } => {
                delegate = ocsp_responder(by.unwrap_or(issuer), ocsp_signing, not_after)?;
                (delegate.der.as_slice(), delegate.key.signing_key())
            }
        };
        let status = match spec.status {
            SimCertStatus::Good => CertStatus::Good,
            SimCertStatus::Revoked { time, reason } => CertStatus::Revoked { time, reason },
            SimCertStatus::Unknown => CertStatus::Unknown,
        };
        build_ocsp_response(&OcspResponseSpec {
            cert_der: &cert.der,
            issuer_der: spec.cert_id_issuer_der.unwrap_or(&issuer.der),
            hash: match spec.hash {
                SimOcspHash::Sha256 => OcspHash::Sha256,
                SimOcspHash::Sha384 => OcspHash::Sha384,
            },
            status,
            produced_at: spec.produced_at,
            this_update: spec.this_update,
            next_update: spec.next_update,
            responder_cert_der,
            responder_key,
        })
        .map_err(|e| SimError::Crypto(format!("simulated OCSP answer: {e}")))
    }

    /// Good answers, at `at`, for every certificate NVIDIA's verifier asks about.
    pub fn ocsp_answers(&self, at: i64) -> Result<Vec<Vec<u8>>, SimError> {
        self.ocsp_pairs()
            .into_iter()
            .map(|(c, _)| self.ocsp_answer(&c.der, SimOcspStatus::Good, at))
            .collect()
    }

    /// The answer to a DER OCSP request, as the simulated responder gives it.
    pub fn answer_request(&self, request_der: &[u8], at: i64) -> Result<Vec<u8>, SimError> {
        use tdx_core::gpu::ocsp::{ocsp_cert_id, parse_ocsp_request};
        let req = parse_ocsp_request(request_der)
            .map_err(|e| SimError::Other(format!("OCSP request: {e}")))?;
        let wanted = req
            .cert_ids
            .first()
            .ok_or_else(|| SimError::Other("OCSP request names no certificate".into()))?;
        for (cert, issuer) in self.ocsp_pairs() {
            if ocsp_cert_id(&cert.der, &issuer.der, &wanted.hash).is_ok_and(|id| id == *wanted) {
                return self.ocsp_answer(&cert.der, SimOcspStatus::Good, at);
            }
        }
        Err(SimError::Other(
            "OCSP request for a certificate this PKI did not issue".into(),
        ))
    }
}

impl SimGpuPki {
    /// Replace the RIM signer by a new one valid until `not_after`, issued by the same L3 CA
    /// (to make a RIM whose only fault is an expired signer).
    pub fn reissue_rim_signer(&mut self, not_after: i64) -> Result<(), SimError> {
        let l3 = self
            .rim_chain
            .get(1)
            .ok_or_else(|| SimError::Other("simulated RIM chain is too short".into()))?;
        let leaf = SimCert::issued_by(
            leaf_params("HCC RIM L4 Signer", SIM_RIM_NOT_BEFORE, not_after, 15)?,
            l3,
        )?;
        if let Some(first) = self.rim_chain.first_mut() {
            *first = leaf;
        }
        Ok(())
    }
}
