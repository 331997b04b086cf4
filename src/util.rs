//! Small helpers shared by several layers.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Creates a new file readable and writable by its owner only (mode 0600). Fails if the
/// file exists, so secrets are never silently replaced.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates a folder (and its parents) readable by its owner only (mode 0700), or narrows
/// an existing one to that: data, PKI and bundle folders hold keys.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Milliseconds since the Unix epoch: the one time unit stored on disk.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 form of a millisecond timestamp (UTC, whole seconds), for people and error
/// messages. Total over every `i64`: years outside 0000-9999 are written with a sign and as
/// many digits as they need, never a panic (a caller's timestamp reaches this in error
/// messages, whatever year it names).
pub fn format_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let year_text = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    };
    format!(
        "{year_text}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// (year, month, day) of a count of days since 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`), in i128 so no day count overflows.
fn civil_from_days(days: i64) -> (i128, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_every_timestamp_without_panicking() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        // Year 10000 and beyond: humantime's formatter panicked here.
        assert_eq!(format_ms(253_402_300_800_000), "+10000-01-01T00:00:00Z");
        for ms in [i64::MAX, i64::MIN, i64::MAX / 2, i64::MIN / 3] {
            assert!(format_ms(ms).ends_with('Z'));
        }
    }
}
