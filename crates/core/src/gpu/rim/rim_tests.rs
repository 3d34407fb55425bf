//! Every real RIM in tests/vectors/nvidia against NVIDIA's own verdicts, and signing.

use super::*;
use crate::test_support::vector;

#[test]
fn smoke() {
    let rim = Rim::parse(&vector(
        "nvidia/nvidia-nvtrust/hopper-550.90.07/NV_GPU_DRIVER_GH100_550.90.07.xml",
    ))
    .unwrap();
    assert_eq!(rim.colloquial_version(), "550.90.07");
    rim.verify_signature().unwrap();
}
