//! `QuoteBuilder`: TD quotes (v4 and v5) signed by the simulated QE, byte for byte in the
//! layout real hardware produces, with knobs tests use to make deliberately bad ones.

use sha2::{Digest, Sha256};

use super::SimPki;
use super::pki::{
    SIM_CPU_SVN, SIM_MRSIGNERSEAM, SIM_QE_ATTRIBUTES, SIM_QE_ISVPRODID, SIM_QE_ISVSVN,
    SIM_QE_MISCSELECT, SIM_SEAM_ATTRIBUTES, SIM_TEE_TCB_SVN, sim_mrseam, sim_qe_mrsigner,
};
use super::settings::{TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE};
use super::{SimError, SimSettings};
use tdx_tee::{Measurements, ReportData, Sha384};

// The layout is the one the strict parser reads: one set of constants for writer and reader.
use tdx_core::quote::layout::{
    ATTESTATION_KEY_ECDSA_P256 as ATT_KEY_TYPE_ECDSA_P256, CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT, QE_REPORT_LEN, TEE_TYPE_TDX, V5_BODY_TD15 as BODY_TYPE_TD15,
};
pub use tdx_core::quote::layout::{
    HEADER_LEN, INTEL_QE_VENDOR_ID as QE_VENDOR_ID, TD10_BODY_LEN, TD15_BODY_LEN,
};

/// Every field of a simulated quote. Start from [`QuoteBuilder::new`] (what the simulated TD
/// would produce) and change what a test needs.
#[derive(Clone, Debug)]
pub struct QuoteBuilder<'a> {
    pki: &'a SimPki,
    /// 4 (TD 1.0 body) or 5 (body type 3, TD 1.5).
    pub version: u16,
    pub report_data: ReportData,
    pub measurements: Measurements,
    pub td_attributes: u64,
    pub xfam: u64,
    /// Only in v5 quotes.
    pub mrservicetd: Sha384,
    pub tee_tcb_svn: [u8; 16],
    /// Only in v5 quotes.
    pub tee_tcb_svn2: [u8; 16],
    pub mrseam: Sha384,
    pub mrsignerseam: Sha384,
    pub seam_attributes: [u8; 8],
    /// Exactly 32 bytes for dcap-qvl; other lengths make a quote it rejects.
    pub qe_auth_data: Vec<u8>,
}

impl<'a> QuoteBuilder<'a> {
    /// The quote the simulated TD produces with `settings` and the live `measurements`.
    pub fn new(
        pki: &'a SimPki,
        settings: &SimSettings,
        measurements: Measurements,
        report_data: ReportData,
    ) -> Self {
        QuoteBuilder {
            pki,
            version: settings.quote_version,
            report_data,
            measurements,
            td_attributes: settings.td_attributes,
            xfam: settings.xfam,
            mrservicetd: settings.mrservicetd,
            tee_tcb_svn: SIM_TEE_TCB_SVN,
            tee_tcb_svn2: SIM_TEE_TCB_SVN,
            mrseam: sim_mrseam(),
            mrsignerseam: SIM_MRSIGNERSEAM,
            seam_attributes: SIM_SEAM_ATTRIBUTES,
            qe_auth_data: (0u8..32).collect(),
        }
    }

    pub fn version(mut self, v: u16) -> Self {
        self.version = v;
        self
    }

    pub fn debug(mut self, on: bool) -> Self {
        self.td_attributes = set_bit(self.td_attributes, TD_ATTR_DEBUG, on);
        self
    }

    pub fn sept_ve_disable(mut self, on: bool) -> Self {
        self.td_attributes = set_bit(self.td_attributes, TD_ATTR_SEPT_VE_DISABLE, on);
        self
    }

    /// Also switches to a v5 quote: only TD 1.5 bodies carry MRSERVICETD.
    pub fn mrservicetd(mut self, v: Sha384) -> Self {
        self.mrservicetd = v;
        self.version = 5;
        self
    }

    pub fn report_data(mut self, rd: ReportData) -> Self {
        self.report_data = rd;
        self
    }

    /// The TD report body: TD 1.0 (584 bytes), plus TEE_TCB_SVN2 and MRSERVICETD for v5.
    pub fn body(&self) -> Vec<u8> {
        let m = &self.measurements;
        let mut b = Vec::with_capacity(TD15_BODY_LEN);
        b.extend_from_slice(&self.tee_tcb_svn);
        b.extend_from_slice(&self.mrseam);
        b.extend_from_slice(&self.mrsignerseam);
        b.extend_from_slice(&self.seam_attributes);
        b.extend_from_slice(&self.td_attributes.to_le_bytes());
        b.extend_from_slice(&self.xfam.to_le_bytes());
        b.extend_from_slice(&m.mrtd);
        b.extend_from_slice(&m.mrconfigid);
        b.extend_from_slice(&m.mrowner);
        b.extend_from_slice(&m.mrownerconfig);
        for r in &m.rtmr {
            b.extend_from_slice(r);
        }
        b.extend_from_slice(&self.report_data);
        if self.version == 5 {
            b.extend_from_slice(&self.tee_tcb_svn2);
            b.extend_from_slice(&self.mrservicetd);
        }
        b
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&ATT_KEY_TYPE_ECDSA_P256.to_le_bytes());
        h.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        // QE SVN and PCE SVN are reserved (zero) in TDX quote headers.
        h.extend_from_slice(&[0u8; 4]);
        h.extend_from_slice(&QE_VENDOR_ID);
        h.extend_from_slice(&[0u8; 20]);
        h
    }

    /// The 384-byte SGX report of the QE, binding the attestation key and auth data.
    fn qe_report(&self, attestation_key: &[u8; 64]) -> [u8; QE_REPORT_LEN] {
        let mut r = [0u8; QE_REPORT_LEN];
        r[0..16].copy_from_slice(&SIM_CPU_SVN);
        r[16..20].copy_from_slice(&SIM_QE_MISCSELECT.to_le_bytes());
        r[48..64].copy_from_slice(&SIM_QE_ATTRIBUTES);
        let mrenclave: [u8; 32] = Sha256::digest(b"tdx-agent simulated TD QE enclave").into();
        r[64..96].copy_from_slice(&mrenclave);
        r[128..160].copy_from_slice(&sim_qe_mrsigner());
        r[256..258].copy_from_slice(&SIM_QE_ISVPRODID.to_le_bytes());
        r[258..260].copy_from_slice(&SIM_QE_ISVSVN.to_le_bytes());
        let mut h = Sha256::new();
        h.update(attestation_key);
        h.update(&self.qe_auth_data);
        r[320..352].copy_from_slice(&h.finalize());
        r
    }

    /// The complete signed quote.
    pub fn build(&self) -> Result<Vec<u8>, SimError> {
        if !matches!(self.version, 4 | 5) {
            return Err(SimError::InvalidSetting {
                field: "quote_version",
                detail: format!("{} (expected 4 or 5)", self.version),
            });
        }
        let qe_auth_len = u16::try_from(self.qe_auth_data.len()).map_err(|_| {
            SimError::Other(format!(
                "QE auth data of {} bytes does not fit a u16 length",
                self.qe_auth_data.len()
            ))
        })?;
        let mut quote = self.header();
        let body = self.body();
        if self.version == 5 {
            quote.extend_from_slice(&BODY_TYPE_TD15.to_le_bytes());
            quote.extend_from_slice(&(body.len() as u32).to_le_bytes());
        }
        quote.extend_from_slice(&body);

        let att_key = self.pki.attestation_public_key();
        let quote_sig = self.pki.sign_with_attestation_key(&quote);
        let qe_report = self.qe_report(&att_key);
        let qe_report_sig = self.pki.sign_with_pck(&qe_report);
        let chain = self.pki.pck_chain_pem();

        let mut inner = Vec::new();
        inner.extend_from_slice(&qe_report);
        inner.extend_from_slice(&qe_report_sig);
        inner.extend_from_slice(&qe_auth_len.to_le_bytes());
        inner.extend_from_slice(&self.qe_auth_data);
        inner.extend_from_slice(&CERT_DATA_PCK_CHAIN.to_le_bytes());
        inner.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        inner.extend_from_slice(chain.as_bytes());

        let mut sig_data = Vec::new();
        sig_data.extend_from_slice(&quote_sig);
        sig_data.extend_from_slice(&att_key);
        sig_data.extend_from_slice(&CERT_DATA_QE_REPORT.to_le_bytes());
        sig_data.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        sig_data.extend_from_slice(&inner);

        quote.extend_from_slice(&(sig_data.len() as u32).to_le_bytes());
        quote.extend_from_slice(&sig_data);
        Ok(quote)
    }
}

fn set_bit(v: u64, bit: u64, on: bool) -> u64 {
    if on { v | bit } else { v & !bit }
}
