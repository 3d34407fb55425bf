//! Quote verification: dcap-qvl for the cryptography, our strict parsing and policy on top.

pub mod collateral;
