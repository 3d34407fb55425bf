//! Instants given on the command line or in collateral: unix seconds or RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix seconds of an RFC 3339 timestamp.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not an RFC 3339 timestamp: {e}"))
}

/// A `--at` value: unix seconds, or an RFC 3339 timestamp.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|e| format!("{t:?} is not a valid unix time: {e}"));
    }
    parse_rfc3339(t).map_err(|e| format!("{t:?} is neither unix seconds nor RFC 3339 ({e})"))
}

pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 text for reports; falls back to the number for out-of-range values.
pub fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        assert_eq!(parse_instant("1751328000").unwrap(), 1_751_328_000);
        assert_eq!(
            parse_instant("2025-07-01T00:00:00Z").unwrap(),
            1_751_328_000
        );
        assert_eq!(
            parse_instant("2025-07-01T02:00:00+02:00").unwrap(),
            1_751_328_000
        );
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("").is_err());
        assert_eq!(format_unix(1_751_328_000), "2025-07-01T00:00:00Z");
    }
}
