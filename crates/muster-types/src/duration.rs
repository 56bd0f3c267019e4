//! Durations on the wire are strings such as `"10s"`, `"1m30s"` or `"500ms"`.

use std::time::Duration;

/// Parses a wire duration (`"10s"`, `"1m30s"`, `"250ms"`).
///
/// A bare number is refused: units are required so `"10"` is never read as
/// ten milliseconds by one client and ten seconds by another.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use a value such as \"10s\"".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration {s:?} has no unit; use a value such as \"{s}s\""
        ));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it (`"10s"`, `"1m 30s"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for ms in [1_000, 90_000, 3_600_000, 1_500] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
