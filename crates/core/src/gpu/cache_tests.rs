//! The verdict cache's bounds: parsed RIMs are kept by their bytes as well as by their count.

use std::sync::Arc;

use super::cache::{MAX_RIM_BYTES, VerdictCache};
use super::rim::MAX_DOCUMENT_LEN;
use crate::test_support::vector;

fn rims() -> [Vec<u8>; 3] {
    [
        "nvidia-nvtrust/hopper-550.90.07/NV_GPU_DRIVER_GH100_550.90.07.xml",
        "nvidia-nvtrust/hopper-550.90.07/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml",
        "solpbc/hopper-595.71.05-96.00.88.00.11/NV_GPU_DRIVER_GH100_595.71.05.xml",
    ]
    .map(|p| vector(&format!("nvidia/{p}")))
}

#[test]
fn the_default_budget_holds_many_of_the_largest_rims() {
    const { assert!(MAX_RIM_BYTES >= 16 * MAX_DOCUMENT_LEN) };
    let cache = VerdictCache::default();
    let [a, ..] = rims();
    let first = cache.rim(&a).unwrap();
    assert!(Arc::ptr_eq(&first, &cache.rim(&a).unwrap()), "not cached");
    assert_eq!(cache.rims_remembered(), (1, a.len()));
}

#[test]
fn parsed_rims_are_bounded_by_bytes_not_only_by_count() {
    let [a, b, c] = rims();
    // Room for any two of them, not for all three.
    let budget = a.len() + b.len() + c.len() - 1;
    let cache = VerdictCache::with_rim_budget(budget);
    cache.rim(&a).unwrap();
    cache.rim(&b).unwrap();
    assert_eq!(cache.rims_remembered(), (2, a.len() + b.len()));
    // The third would go over: the RIMs are emptied first, as at the entry limit.
    cache.rim(&c).unwrap();
    assert_eq!(cache.rims_remembered(), (1, c.len()));
    // Asking again for one that is remembered adds nothing.
    cache.rim(&c).unwrap();
    assert_eq!(cache.rims_remembered(), (1, c.len()));
    // A RIM larger than the whole budget is parsed and answered, never kept.
    let tiny = VerdictCache::with_rim_budget(a.len() - 1);
    assert!(tiny.rim(&a).is_ok());
    assert_eq!(tiny.rims_remembered(), (0, 0));
}
