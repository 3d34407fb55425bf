//! Intel-signed collateral for one quote, and the JSON bundle file that carries it.

/// The DCAP collateral (dcap-qvl's `QuoteCollateralV3` fields) in raw form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    /// PEM chain (PCK CA, root) that signed the PCK CRL.
    pub pck_crl_issuer_chain: String,
    /// DER of the root CA's CRL.
    pub root_ca_crl: Vec<u8>,
    /// DER of the PCK (processor or platform) CA's CRL.
    pub pck_crl: Vec<u8>,
    /// PEM chain (TCB signing cert, root) that signed the TCB info.
    pub tcb_info_issuer_chain: String,
    /// The exact signed JSON text of the `tcbInfo` object.
    pub tcb_info: String,
    /// Raw 64-byte ECDSA P-256 r||s over `tcb_info`.
    pub tcb_info_signature: Vec<u8>,
    /// PEM chain that signed the QE identity.
    pub qe_identity_issuer_chain: String,
    /// The exact signed JSON text of the `enclaveIdentity` object.
    pub qe_identity: String,
    /// Raw 64-byte ECDSA P-256 r||s over `qe_identity`.
    pub qe_identity_signature: Vec<u8>,
}

impl From<&Collateral> for dcap_qvl::QuoteCollateralV3 {
    fn from(c: &Collateral) -> Self {
        dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
            root_ca_crl: c.root_ca_crl.clone(),
            pck_crl: c.pck_crl.clone(),
            tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
            tcb_info: c.tcb_info.clone(),
            tcb_info_signature: c.tcb_info_signature.clone(),
            qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
            qe_identity: c.qe_identity.clone(),
            qe_identity_signature: c.qe_identity_signature.clone(),
            pck_certificate_chain: None,
        }
    }
}
