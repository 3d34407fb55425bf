//! Human names for TCG / UEFI event types and short descriptions of event data, for people
//! reading a replay.

/// The TCG PC Client / UEFI name of an event type.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    Some(match event_type {
        0x0000_0000 => "EV_PREBOOT_CERT",
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0002 => "EV_UNUSED",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_0009 => "EV_CPU_MICROCODE",
        0x0000_000A => "EV_PLATFORM_CONFIG_FLAGS",
        0x0000_000B => "EV_TABLE_OF_DEVICES",
        0x0000_000C => "EV_COMPACT_HASH",
        0x0000_000D => "EV_IPL",
        0x0000_000E => "EV_IPL_PARTITION_DATA",
        0x0000_000F => "EV_NONHOST_CODE",
        0x0000_0010 => "EV_NONHOST_CONFIG",
        0x0000_0011 => "EV_NONHOST_INFO",
        0x0000_0012 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x0000_0013 => "EV_POST_CODE2",
        0x8000_0000 => "EV_EFI_EVENT_BASE",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
        0x8000_000D => "EV_EFI_GPT_EVENT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00E2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        0x8000_00E3 => "EV_EFI_SPDM_DEVICE_POLICY",
        0x8000_00E4 => "EV_EFI_SPDM_DEVICE_AUTHORITY",
        _ => return None,
    })
}

/// A one-line summary of what the event measured, where the data says so in text: the UEFI
/// variable name, the firmware blob / handoff table description, or the data itself when it
/// is a string (boot loader commands, EFI actions).
pub(super) fn describe(event_type: u32, data: &[u8]) -> Option<String> {
    match event_type {
        0x8000_0001 | 0x8000_0002 | 0x8000_000C | 0x8000_00E0 => variable_name(data),
        0x8000_000A | 0x8000_000B => {
            let (len, rest) = data.split_first()?;
            ascii_text(rest.get(..usize::from(*len))?)
        }
        _ => ascii_text(data).or_else(|| utf16_text(data)),
    }
}

/// UEFI_VARIABLE_DATA: GUID, u64 name length (CHAR16s), u64 data length, name, data.
fn variable_name(data: &[u8]) -> Option<String> {
    let len_bytes: [u8; 8] = data.get(16..24)?.try_into().ok()?;
    let chars = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
    let name = data.get(32..32usize.checked_add(chars.checked_mul(2)?)?)?;
    utf16_text(name)
}

/// Printable ASCII, allowing whitespace and trailing NULs.
fn ascii_text(data: &[u8]) -> Option<String> {
    let trimmed = trim_trailing_nuls(data);
    if trimmed.is_empty()
        || !trimmed
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return None;
    }
    Some(String::from_utf8_lossy(trimmed).into_owned())
}

/// UTF-16LE of printable ASCII characters, allowing a trailing NUL.
fn utf16_text(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let mut out = String::new();
    for pair in data.chunks_exact(2) {
        let c = u16::from_le_bytes([pair[0], pair[1]]);
        if c == 0 {
            break;
        }
        let c = u8::try_from(c).ok()?;
        if !(c.is_ascii_graphic() || c == b' ') {
            return None;
        }
        out.push(char::from(c));
    }
    (!out.is_empty()).then_some(out)
}

fn trim_trailing_nuls(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    &data[..end]
}
