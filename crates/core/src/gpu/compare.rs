//! The comparison of a GPU's measurement blocks with the golden values of its two RIMs, by
//! NVIDIA's rules (docs/design.md §14): the union of the driver and VBIOS RIMs' active
//! indices, an index active in both is an error, each runtime block must equal one of its
//! entry's alternatives, RIM index i is SPDM block i+1, and index 35 is skipped when the
//! report says NVDEC0 is disabled.

use std::collections::BTreeMap;
use std::fmt;

use super::spdm::{SpdmReport, opaque};

/// The RIM measurement index NVDEC0's firmware occupies: with NVDEC0 disabled the GPU reports
/// no meaningful value there.
pub const NVDEC0_INDEX: u16 = 35;
/// Opaque NVDEC0 status value meaning "disabled" (0xAA is enabled).
pub const NVDEC0_DISABLED: u8 = 0x55;

/// Which RIM a golden measurement came from, in NVIDIA's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Driver,
    Firmware,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Driver => "Driver",
            Source::Firmware => "Firmware",
        })
    }
}

/// One active golden measurement: its RIM index and the values it may take.
#[derive(Clone, Copy, Debug)]
pub struct Golden<'a> {
    pub index: u16,
    pub alternatives: &'a [[u8; 48]],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    #[error("measurement index {index} is active in both the driver RIM and the VBIOS RIM")]
    IndexConflict { index: u16 },
    #[error("measurement index {index} is listed twice as active in the {rim} RIM")]
    Duplicate { index: u16, rim: Source },
    #[error(
        "the RIMs give {golden} active measurements but the report carries only {runtime} blocks"
    )]
    MoreGoldenThanRuntime { golden: usize, runtime: usize },
    #[error("the runtime measurements differ from the golden ones at {}", list(.mismatched))]
    Mismatch { mismatched: Vec<(u16, Source)> },
}

fn list(m: &[(u16, Source)]) -> String {
    m.iter()
        .map(|(i, s)| format!("{i} [{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a successful comparison covered, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compared {
    /// Indices compared, ascending.
    pub compared: Vec<u16>,
    /// Index 35, when NVDEC0 is disabled and the RIMs have it active.
    pub skipped_nvdec0: Option<u16>,
}

/// Whether the report says NVDEC0 is disabled (its index is then not compared).
pub fn nvdec0_disabled(report: &SpdmReport) -> bool {
    report.opaque_field(opaque::NVDEC0_STATUS) == Some(&[NVDEC0_DISABLED][..])
}

/// Compare `report`'s blocks with the active golden measurements of both RIMs.
pub fn compare_measurements<'a>(
    report: &SpdmReport,
    driver: impl IntoIterator<Item = Golden<'a>>,
    vbios: impl IntoIterator<Item = Golden<'a>>,
) -> Result<Compared, CompareError> {
    let mut golden: BTreeMap<u16, (Golden<'a>, Source)> = BTreeMap::new();
    for (entries, source) in [
        (driver.into_iter().collect::<Vec<_>>(), Source::Driver),
        (vbios.into_iter().collect::<Vec<_>>(), Source::Firmware),
    ] {
        for g in entries {
            match golden.get(&g.index) {
                Some((_, Source::Driver)) if source == Source::Firmware => {
                    return Err(CompareError::IndexConflict { index: g.index });
                }
                Some(_) => {
                    return Err(CompareError::Duplicate {
                        index: g.index,
                        rim: source,
                    });
                }
                None => {
                    golden.insert(g.index, (g, source));
                }
            }
        }
    }
    if golden.len() > report.blocks.len() {
        return Err(CompareError::MoreGoldenThanRuntime {
            golden: golden.len(),
            runtime: report.blocks.len(),
        });
    }
    let skip_nvdec0 = nvdec0_disabled(report);
    let mut out = Compared {
        compared: Vec::new(),
        skipped_nvdec0: None,
    };
    let mut mismatched = Vec::new();
    for (index, (g, source)) in golden {
        if index == NVDEC0_INDEX && skip_nvdec0 {
            out.skipped_nvdec0 = Some(index);
            continue;
        }
        // RIM index i is SPDM block i+1; an index past the blocks' range is simply missing.
        let runtime = index
            .checked_add(1)
            .and_then(|block| u8::try_from(block).ok())
            .and_then(|block| report.block(block))
            .map(|b| b.value.as_slice());
        let matches = runtime.is_some_and(|v| g.alternatives.iter().any(|a| a[..] == *v));
        if !matches {
            mismatched.push((index, source));
        }
        out.compared.push(index);
    }
    if mismatched.is_empty() {
        Ok(out)
    } else {
        Err(CompareError::Mismatch { mismatched })
    }
}
