//! `SimPki`: the simulated Intel PKI (root, PCK CA, PCK leaf, TCB signing, QE attestation key)
//! and the collateral it signs on demand.

use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::der::{PckPlatform, SGX_EXTENSION_OID, sgx_extension};
use super::fsio;
use super::{SimDir, SimError, SimSettings};
use tdx_core::verify::collateral::Collateral;

/// The simulated platform's FMSPC (shown as hex in TCB info and PCCS URLs).
pub const SIM_FMSPC: [u8; 6] = [0x00, 0x5A, 0x51, 0x4D, 0x00, 0x00];
pub const SIM_PCE_ID: [u8; 2] = [0, 0];
pub const SIM_PCE_SVN: u16 = 13;
/// SGX TCB component SVNs; the PCK certificate's CPUSVN is the same 16 bytes.
pub const SIM_CPU_SVN: [u8; 16] = [4, 4, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
/// TEE_TCB_SVN: [0] TDX module ISVSVN, [1] module version (selects identity `TDX_01`), then the
/// remaining TDX TCB components.
pub const SIM_TEE_TCB_SVN: [u8; 16] = [3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// The TDX module signer Intel publishes is all zeros; the simulation keeps that shape.
pub const SIM_MRSIGNERSEAM: [u8; 48] = [0; 48];
pub const SIM_SEAM_ATTRIBUTES: [u8; 8] = [0; 8];
/// The QE's product ID and SVN, as Intel's TD QE reports them.
pub const SIM_QE_ISVPRODID: u16 = 2;
pub const SIM_QE_ISVSVN: u16 = 4;
/// QE attributes: INIT | MODE64BIT, no DEBUG.
pub const SIM_QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const SIM_QE_MISCSELECT: u32 = 0;

/// The MRSIGNER of the simulated QE: a labelled hash, visibly not Intel's.
pub fn sim_qe_mrsigner() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b"tdx-agent simulated TD QE signer").into()
}

/// The MRSEAM of the simulated TDX module.
pub fn sim_mrseam() -> [u8; 48] {
    super::settings::labelled("MRSEAM")
}

/// Dates of the TCB levels (informational only: verifiers compare them with nothing but
/// each other).
const TCB_DATE_CURRENT: &str = "2025-01-15T00:00:00Z";
const TCB_DATE_OLD: &str = "2023-02-15T00:00:00Z";

const ROOT_CN: &str = "tdx-agent SIMULATED Root CA \u{2014} not Intel";
const PCK_CA_CN: &str = "tdx-agent SIMULATED Intel SGX PCK Processor CA \u{2014} not Intel";
const PCK_CN: &str = "tdx-agent SIMULATED Intel SGX PCK Certificate \u{2014} not Intel";
const TCB_CN: &str = "tdx-agent SIMULATED Intel SGX TCB Signing \u{2014} not Intel";
const ORG: &str = "tdx-agent simulation (not Intel Corporation)";

const ROOT_LIFETIME_DAYS: i64 = 20 * 365;
const LEAF_LIFETIME_DAYS: i64 = 10 * 365;
/// Certificates start a year back so that tests and tools with an explicit `now` slightly
/// in the past still fall inside the validity window.
const BACKDATE_DAYS: i64 = 365;

/// File names under DIR/pki/.
const F_ROOT_KEY: &str = "root.key.pem";
const F_ROOT: &str = "root.der";
const F_PCK_CA_KEY: &str = "pck-ca.key.pem";
const F_PCK_CA: &str = "pck-ca.der";
const F_PCK_KEY: &str = "pck.key.pem";
const F_PCK: &str = "pck.der";
const F_TCB_KEY: &str = "tcb-signing.key.pem";
const F_TCB: &str = "tcb-signing.der";
const F_QE_KEY: &str = "qe-attestation.key.pem";
const PKI_FILES: &[&str] = &[
    F_ROOT_KEY,
    F_ROOT,
    F_PCK_CA_KEY,
    F_PCK_CA,
    F_PCK_KEY,
    F_PCK,
    F_TCB_KEY,
    F_TCB,
    F_QE_KEY,
];

/// A key in both forms the simulation needs: rcgen for X.509 and CRLs, p256 for raw r||s
/// signatures over quotes and JSON.
struct SimKey {
    rcgen: KeyPair,
    p256: SigningKey,
}

impl SimKey {
    fn from_pem(path: &Path, pem: &str) -> Result<SimKey, SimError> {
        let rcgen = KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| SimError::malformed(path, format!("not a P-256 PKCS#8 key: {e}")))?;
        let p256 = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| SimError::malformed(path, format!("not a P-256 PKCS#8 key: {e}")))?;
        Ok(SimKey { rcgen, p256 })
    }

    fn generate() -> Result<(SimKey, String), SimError> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let pem = kp.serialize_pem();
        let key = SimKey::from_pem(Path::new("<generated key>"), &pem)?;
        Ok((key, pem))
    }

    /// Raw r||s ECDSA P-256 / SHA-256 signature, the form DCAP uses everywhere.
    fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        let sig: p256::ecdsa::Signature = self.p256.sign(msg);
        sig.to_bytes().into()
    }

    /// The uncompressed public point without the 0x04 prefix (x||y).
    fn public_xy(&self) -> [u8; 64] {
        let point = self.p256.verifying_key().to_encoded_point(false);
        let mut out = [0u8; 64];
        out.copy_from_slice(&point.as_bytes()[1..65]);
        out
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORG);
    dn
}

/// The parameters of each certificate. Issuers are rebuilt from these on load (rcgen needs the
/// issuer's name and key, not its certificate), so they must stay deterministic.
fn root_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(ROOT_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn pck_ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(PCK_CA_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.use_authority_key_identifier_extension = true;
    p
}

fn pck_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(PCK_CN);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    p.use_authority_key_identifier_extension = true;
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        SGX_EXTENSION_OID,
        sgx_extension(&sim_platform()),
    )];
    p
}

fn tcb_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(TCB_CN);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    p.use_authority_key_identifier_extension = true;
    p
}

/// The platform the PCK certificate describes.
pub fn sim_platform() -> PckPlatform {
    use sha2::Digest;
    let ppid: [u8; 32] = sha2::Sha256::digest(b"tdx-agent simulated PPID").into();
    let mut p = [0u8; 16];
    p.copy_from_slice(&ppid[..16]);
    PckPlatform {
        ppid: p,
        cpu_svn: SIM_CPU_SVN,
        pce_svn: SIM_PCE_SVN,
        pce_id: SIM_PCE_ID,
        fmspc: SIM_FMSPC,
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(&mut b);
    // A positive serial with no leading zero byte, as RFC 5280 wants.
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}

fn with_validity(mut p: CertificateParams, now: OffsetDateTime, days: i64) -> CertificateParams {
    p.not_before = now - time::Duration::days(BACKDATE_DAYS);
    p.not_after = now + time::Duration::days(days);
    p.serial_number = Some(random_serial());
    p
}

/// The simulated PKI, loaded from DIR/pki/. Holds the settings snapshot that shapes the
/// collateral (lifetime, TCB status, advisories).
pub struct SimPki {
    dir: PathBuf,
    settings: SimSettings,
    root_key: SimKey,
    root_der: Vec<u8>,
    pck_ca_key: SimKey,
    pck_ca_der: Vec<u8>,
    pck_key: SimKey,
    pck_der: Vec<u8>,
    tcb_key: SimKey,
    tcb_der: Vec<u8>,
    qe_key: SimKey,
}

impl std::fmt::Debug for SimPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Generate a PKI into `pki_dir` (which must not exist yet) and make it appear atomically:
/// built in a sibling temp dir, then renamed. If another process won the race, its PKI stays.
pub(crate) fn create_pki(sim_dir: &Path) -> Result<(), SimError> {
    let pki_dir = sim_dir.join("pki");
    let tmp = sim_dir.join(format!(".pki.tmp-{}", fsio::unique_suffix()));
    fsio::create_dir_all(&tmp)?;
    let result = write_new_pki(&tmp).and_then(|()| fsio::sync_dir(&tmp));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &pki_dir) {
        Ok(()) => fsio::sync_dir(sim_dir),
        Err(_) if pki_dir.is_dir() => {
            // Another process created it first; theirs is the one clients may already hold.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(SimError::io("rename", &pki_dir, e))
        }
    }
}

fn write_new_pki(dir: &Path) -> Result<(), SimError> {
    let now = OffsetDateTime::now_utc();
    let (root_key, root_pem) = SimKey::generate()?;
    let (pck_ca_key, pck_ca_pem) = SimKey::generate()?;
    let (pck_key, pck_pem) = SimKey::generate()?;
    let (tcb_key, tcb_pem) = SimKey::generate()?;
    let (_qe_key, qe_pem) = SimKey::generate()?;

    let root =
        with_validity(root_params(), now, ROOT_LIFETIME_DAYS).self_signed(&root_key.rcgen)?;
    let root_issuer = Issuer::new(root_params(), &root_key.rcgen);
    let pck_ca = with_validity(pck_ca_params(), now, ROOT_LIFETIME_DAYS)
        .signed_by(&pck_ca_key.rcgen, &root_issuer)?;
    let pck_ca_issuer = Issuer::new(pck_ca_params(), &pck_ca_key.rcgen);
    let pck = with_validity(pck_params(), now, LEAF_LIFETIME_DAYS)
        .signed_by(&pck_key.rcgen, &pck_ca_issuer)?;
    let tcb = with_validity(tcb_params(), now, LEAF_LIFETIME_DAYS)
        .signed_by(&tcb_key.rcgen, &root_issuer)?;

    let files: [(&str, &[u8]); 9] = [
        (F_ROOT_KEY, root_pem.as_bytes()),
        (F_ROOT, root.der()),
        (F_PCK_CA_KEY, pck_ca_pem.as_bytes()),
        (F_PCK_CA, pck_ca.der()),
        (F_PCK_KEY, pck_pem.as_bytes()),
        (F_PCK, pck.der()),
        (F_TCB_KEY, tcb_pem.as_bytes()),
        (F_TCB, tcb.der()),
        (F_QE_KEY, qe_pem.as_bytes()),
    ];
    for (name, bytes) in files {
        write_private(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Keys are secrets even in a simulation (anyone holding them can forge "simulated" evidence
/// for this DIR): create files 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SimError::io("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| SimError::io("write", path, e))?;
    f.sync_all().map_err(|e| SimError::io("fsync", path, e))
}

/// Which PKI files are missing from `pki_dir` (empty when complete).
pub(crate) fn missing_pki_files(pki_dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let mut missing = Vec::new();
    for name in PKI_FILES {
        let p = pki_dir.join(name);
        if !fsio::exists(&p)? {
            missing.push(p);
        }
    }
    Ok(missing)
}

fn load_key(dir: &Path, name: &str) -> Result<SimKey, SimError> {
    let path = dir.join(name);
    let pem = fsio::read_string(&path)?;
    SimKey::from_pem(&path, &pem)
}

/// Load a certificate and check it carries `key`'s public key, so a mixed-up or half-replaced
/// PKI is caught here rather than as a baffling verification failure later.
fn load_cert(dir: &Path, name: &str, key: &SimKey) -> Result<Vec<u8>, SimError> {
    let path = dir.join(name);
    let der = fsio::read(&path)?;
    let (rest, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| SimError::malformed(&path, format!("not a DER certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(SimError::malformed(
            &path,
            "trailing bytes after the certificate",
        ));
    }
    let spki_point = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    let mut expected = vec![0x04];
    expected.extend_from_slice(&key.public_xy());
    if spki_point != expected.as_slice() {
        return Err(SimError::HalfMade {
            dir: dir.to_path_buf(),
            detail: format!("{} does not match its key", path.display()),
        });
    }
    Ok(der)
}

fn rfc3339(secs: u64) -> Result<String, SimError> {
    let t = to_datetime(secs)?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt)
        .map_err(|e| SimError::Other(format!("cannot format time {secs}: {e}")))
}

fn to_datetime(secs: u64) -> Result<OffsetDateTime, SimError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| SimError::Other(format!("time {secs} is out of range")))
}

fn pem_cert(der: &[u8]) -> String {
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    };
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

// The JSON shapes below serialise in declaration order: the signed text reads like Intel's.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoJson<'a> {
    id: &'a str,
    version: u8,
    issue_date: String,
    next_update: String,
    fmspc: String,
    pce_id: String,
    tcb_type: u32,
    tcb_evaluation_data_number: u32,
    tdx_module: TdxModuleJson,
    tdx_module_identities: Vec<TdxModuleIdentityJson>,
    tcb_levels: Vec<TcbLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleJson {
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleIdentityJson {
    id: String,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    tcb_levels: Vec<IsvLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IsvLevelJson {
    tcb: IsvSvnJson,
    tcb_date: String,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "Vec::is_empty")]
    advisory_ids: Vec<String>,
}

#[derive(Serialize)]
struct IsvSvnJson {
    isvsvn: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevelJson {
    tcb: TcbJson,
    tcb_date: String,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "Vec::is_empty")]
    advisory_ids: Vec<String>,
}

#[derive(Serialize)]
struct TcbJson {
    sgxtcbcomponents: Vec<SvnJson>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<SvnJson>,
}

#[derive(Serialize)]
struct SvnJson {
    svn: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityJson<'a> {
    id: &'a str,
    version: u8,
    issue_date: String,
    next_update: String,
    tcb_evaluation_data_number: u32,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<IsvLevelJson>,
}

fn svns(bytes: &[u8]) -> Vec<SvnJson> {
    bytes.iter().map(|b| SvnJson { svn: *b }).collect()
}

fn to_json<T: Serialize>(v: &T) -> Result<String, SimError> {
    serde_json::to_string(v).map_err(|e| SimError::Other(format!("cannot encode JSON: {e}")))
}

impl SimPki {
    /// Load the PKI of an existing simulation directory.
    pub fn load(dir: &SimDir) -> Result<SimPki, SimError> {
        let settings = dir.settings()?;
        let pki = dir.pki_dir();
        if let Some(missing) = missing_pki_files(&pki)?.into_iter().next() {
            return Err(SimError::NotInitialised {
                dir: dir.path().to_path_buf(),
                missing,
            });
        }
        let root_key = load_key(&pki, F_ROOT_KEY)?;
        let pck_ca_key = load_key(&pki, F_PCK_CA_KEY)?;
        let pck_key = load_key(&pki, F_PCK_KEY)?;
        let tcb_key = load_key(&pki, F_TCB_KEY)?;
        let qe_key = load_key(&pki, F_QE_KEY)?;
        Ok(SimPki {
            dir: dir.path().to_path_buf(),
            settings,
            root_der: load_cert(&pki, F_ROOT, &root_key)?,
            pck_ca_der: load_cert(&pki, F_PCK_CA, &pck_ca_key)?,
            pck_der: load_cert(&pki, F_PCK, &pck_key)?,
            tcb_der: load_cert(&pki, F_TCB, &tcb_key)?,
            root_key,
            pck_ca_key,
            pck_key,
            tcb_key,
            qe_key,
        })
    }

    /// Create the simulation directory's PKI if it has none yet, then load it.
    pub fn load_or_create(dir: &SimDir) -> Result<SimPki, SimError> {
        dir.ensure_pki()?;
        SimPki::load(dir)
    }

    /// The settings this PKI was loaded with.
    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }

    /// DER of the simulated root CA (what clients pass as `--insecure-root`).
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    pub fn pck_ca_der(&self) -> &[u8] {
        &self.pck_ca_der
    }

    pub fn pck_der(&self) -> &[u8] {
        &self.pck_der
    }

    pub fn tcb_signing_der(&self) -> &[u8] {
        &self.tcb_der
    }

    /// PEM chain carried in quotes (certification data type 5): PCK leaf, PCK CA, root.
    pub fn pck_chain_pem(&self) -> String {
        pem_cert(&self.pck_der) + &pem_cert(&self.pck_ca_der) + &pem_cert(&self.root_der)
    }

    /// PEM chain that signed the PCK CRL: PCK CA, root.
    pub fn pck_crl_issuer_chain_pem(&self) -> String {
        pem_cert(&self.pck_ca_der) + &pem_cert(&self.root_der)
    }

    /// PEM chain that signed TCB info and QE identity: TCB signing cert, root.
    pub fn tcb_issuer_chain_pem(&self) -> String {
        pem_cert(&self.tcb_der) + &pem_cert(&self.root_der)
    }

    pub fn fmspc(&self) -> [u8; 6] {
        SIM_FMSPC
    }

    /// x||y of the QE attestation key that signs quotes.
    pub(crate) fn attestation_public_key(&self) -> [u8; 64] {
        self.qe_key.public_xy()
    }

    pub(crate) fn sign_with_attestation_key(&self, msg: &[u8]) -> [u8; 64] {
        self.qe_key.sign_raw(msg)
    }

    pub(crate) fn sign_with_pck(&self, msg: &[u8]) -> [u8; 64] {
        self.pck_key.sign_raw(msg)
    }

    fn crl(&self, issuer: Issuer<'_, &KeyPair>, now: u64) -> Result<Vec<u8>, SimError> {
        let (this, next) = self.window(now)?;
        let params = CertificateRevocationListParams {
            this_update: to_datetime(this)?,
            next_update: to_datetime(next)?,
            // Increasing over time like a real CRL number, and small enough for a u32.
            crl_number: SerialNumber::from(((now / 60) & 0x7fff_ffff).max(1)),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&issuer)?.der().to_vec())
    }

    /// (issue, next update): issued a minute back so small clock skew between the generator
    /// and the verifier does not make fresh collateral "from the future".
    fn window(&self, now: u64) -> Result<(u64, u64), SimError> {
        let next = now
            .checked_add(self.settings.collateral_lifetime_secs)
            .ok_or_else(|| SimError::Other(format!("time {now} is out of range")))?;
        Ok((now.saturating_sub(60), next))
    }

    /// DER of the root CA's CRL, valid from `now - 60 s` for the collateral lifetime.
    pub fn root_ca_crl(&self, now: u64) -> Result<Vec<u8>, SimError> {
        self.crl(Issuer::new(root_params(), &self.root_key.rcgen), now)
    }

    /// DER of the PCK (processor) CA's CRL.
    pub fn pck_crl(&self, now: u64) -> Result<Vec<u8>, SimError> {
        self.crl(Issuer::new(pck_ca_params(), &self.pck_ca_key.rcgen), now)
    }

    /// The signed TCB info text (the `tcbInfo` object) and its raw r||s signature.
    pub fn tcb_info(&self, now: u64) -> Result<(String, [u8; 64]), SimError> {
        let (issue, next) = self.window(now)?;
        let s = &self.settings;
        let module_mrsigner = hex::encode_upper(SIM_MRSIGNERSEAM);
        let module_attrs = hex::encode_upper(SIM_SEAM_ATTRIBUTES);
        let module_mask = "FFFFFFFFFFFFFFFF".to_string();
        let module_id = format!("TDX_{:02X}", SIM_TEE_TCB_SVN[1]);
        let info = TcbInfoJson {
            id: "TDX",
            version: 3,
            issue_date: rfc3339(issue)?,
            next_update: rfc3339(next)?,
            fmspc: hex::encode_upper(SIM_FMSPC),
            pce_id: hex::encode_upper(SIM_PCE_ID),
            tcb_type: 0,
            tcb_evaluation_data_number: s.tcb_evaluation_data_number,
            tdx_module: TdxModuleJson {
                mrsigner: module_mrsigner.clone(),
                attributes: module_attrs.clone(),
                attributes_mask: module_mask.clone(),
            },
            tdx_module_identities: vec![TdxModuleIdentityJson {
                id: module_id,
                mrsigner: module_mrsigner,
                attributes: module_attrs,
                attributes_mask: module_mask,
                tcb_levels: vec![
                    IsvLevelJson {
                        tcb: IsvSvnJson {
                            isvsvn: u16::from(SIM_TEE_TCB_SVN[0]),
                        },
                        tcb_date: TCB_DATE_CURRENT.into(),
                        tcb_status: "UpToDate".into(),
                        advisory_ids: Vec::new(),
                    },
                    IsvLevelJson {
                        tcb: IsvSvnJson { isvsvn: 0 },
                        tcb_date: TCB_DATE_OLD.into(),
                        tcb_status: "OutOfDate".into(),
                        advisory_ids: vec!["INTEL-SA-SIM-0001".into()],
                    },
                ],
            }],
            tcb_levels: vec![
                // The level the simulated platform sits at; its status is the setting.
                TcbLevelJson {
                    tcb: TcbJson {
                        sgxtcbcomponents: svns(&SIM_CPU_SVN),
                        pcesvn: SIM_PCE_SVN,
                        tdxtcbcomponents: svns(&SIM_TEE_TCB_SVN),
                    },
                    tcb_date: TCB_DATE_CURRENT.into(),
                    tcb_status: s.tcb_status.clone(),
                    advisory_ids: s.advisory_ids.clone(),
                },
                // A floor level so a quote built with lower SVNs is OutOfDate, not unmatched.
                TcbLevelJson {
                    tcb: TcbJson {
                        sgxtcbcomponents: svns(&[0; 16]),
                        pcesvn: 0,
                        tdxtcbcomponents: svns(&[0; 16]),
                    },
                    tcb_date: TCB_DATE_OLD.into(),
                    tcb_status: "OutOfDate".into(),
                    advisory_ids: vec!["INTEL-SA-SIM-0001".into()],
                },
            ],
        };
        let text = to_json(&info)?;
        let sig = self.tcb_key.sign_raw(text.as_bytes());
        Ok((text, sig))
    }

    /// The signed QE identity text (the `enclaveIdentity` object) and its raw r||s signature.
    pub fn qe_identity(&self, now: u64) -> Result<(String, [u8; 64]), SimError> {
        let (issue, next) = self.window(now)?;
        let id = QeIdentityJson {
            id: "TD_QE",
            version: 2,
            issue_date: rfc3339(issue)?,
            next_update: rfc3339(next)?,
            tcb_evaluation_data_number: self.settings.tcb_evaluation_data_number,
            miscselect: hex::encode_upper(SIM_QE_MISCSELECT.to_le_bytes()),
            miscselect_mask: "FFFFFFFF".into(),
            attributes: hex::encode_upper(SIM_QE_ATTRIBUTES),
            attributes_mask: "FBFFFFFFFFFFFFFF0000000000000000".into(),
            mrsigner: hex::encode_upper(sim_qe_mrsigner()),
            isvprodid: SIM_QE_ISVPRODID,
            tcb_levels: vec![IsvLevelJson {
                tcb: IsvSvnJson {
                    isvsvn: SIM_QE_ISVSVN,
                },
                tcb_date: TCB_DATE_CURRENT.into(),
                tcb_status: "UpToDate".into(),
                advisory_ids: Vec::new(),
            }],
        };
        let text = to_json(&id)?;
        let sig = self.tcb_key.sign_raw(text.as_bytes());
        Ok((text, sig))
    }

    /// Fresh collateral for the simulated platform, valid from `now - 60 s` until
    /// `now + collateral_lifetime_secs`.
    pub fn collateral(&self, now_unix: u64) -> Result<Collateral, SimError> {
        let (tcb_info, tcb_sig) = self.tcb_info(now_unix)?;
        let (qe_identity, qe_sig) = self.qe_identity(now_unix)?;
        let tcb_chain = self.tcb_issuer_chain_pem();
        Ok(Collateral {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain_pem(),
            root_ca_crl: self.root_ca_crl(now_unix)?,
            pck_crl: self.pck_crl(now_unix)?,
            tcb_info_issuer_chain: tcb_chain.clone(),
            tcb_info,
            tcb_info_signature: tcb_sig.to_vec(),
            qe_identity_issuer_chain: tcb_chain,
            qe_identity,
            qe_identity_signature: qe_sig.to_vec(),
        })
    }
}
