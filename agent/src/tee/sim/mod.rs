//! The simulated TD and its test PKI. TODO(helper)
