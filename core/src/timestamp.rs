//! SPEC §1 event times: the strict ISO 8601 form and its inverse.
//!
//! The accepted form is exactly `YYYY-MM-DDTHH:MM:SS[.f][Z|±hh:mm]`:
//!
//! * a four-digit year (0000–9999), a real calendar date (leap years by the Gregorian rule),
//!   hours 00–23, minutes 00–59, seconds 00–59 (no leap second: the epoch-millisecond
//!   timeline has no room for it);
//! * an optional fraction of 1–9 digits, **truncated** (never rounded) to the millisecond;
//! * an optional `Z` or `±hh:mm` offset within ±23:59; no offset means UTC.
//!
//! Everything else is rejected: lowercase `t`/`z`, a space instead of `T`, missing seconds,
//! compact offsets (`+0100`), trailing text. The parser works on bytes with fixed positions,
//! so it allocates nothing and cannot panic (every index is bounds-checked through `get`).
//!
//! Days are counted with Howard Hinnant's `days_from_civil`/`civil_from_days`, which are exact
//! for the proleptic Gregorian calendar in both directions.

/// Why an ISO 8601 timestamp was rejected. `Display` is one line, without the input
/// (the payload is stored next to it in `dead_letters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// A character that the form does not allow at this position.
    #[error("expected {expected} at byte {at} (form YYYY-MM-DDTHH:MM:SS[.f][Z|±hh:mm])")]
    Syntax {
        /// What the form wants here.
        expected: &'static str,
        /// 0-based byte position in the string.
        at: usize,
    },
    /// The fractional seconds have more than nine digits.
    #[error("fraction of seconds has more than 9 digits")]
    FractionTooLong,
    /// The date does not exist (e.g. 2023-02-29, month 13, day 0).
    #[error("no such date {year:04}-{month:02}-{day:02}")]
    InvalidDate {
        /// Year as written.
        year: u32,
        /// Month as written.
        month: u32,
        /// Day as written.
        day: u32,
    },
    /// Hours, minutes or seconds out of range (e.g. 24:00:00, 12:60:00, 23:59:60).
    #[error("no such time {hour:02}:{minute:02}:{second:02}")]
    InvalidTime {
        /// Hour as written.
        hour: u32,
        /// Minute as written.
        minute: u32,
        /// Second as written.
        second: u32,
    },
    /// A `±hh:mm` offset beyond ±23:59 or with minutes ≥ 60.
    #[error("UTC offset {hours:02}:{minutes:02} out of range (at most ±23:59)")]
    InvalidOffset {
        /// Offset hours as written.
        hours: u32,
        /// Offset minutes as written.
        minutes: u32,
    },
}

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Parses the SPEC §1 ISO 8601 form into milliseconds since the Unix epoch (negative before
/// 1970). See the module docs for exactly what is accepted.
///
/// ```
/// use encore_core::parse_iso_timestamp;
/// assert_eq!(parse_iso_timestamp("1970-01-01T00:00:01.9999Z"), Ok(1_999));
/// assert_eq!(parse_iso_timestamp("1970-01-01T01:00:00+01:00"), Ok(0));
/// assert!(parse_iso_timestamp("1970-01-01 00:00:00").is_err());
/// ```
pub fn parse_iso_timestamp(s: &str) -> Result<i64, TimestampError> {
    let mut cursor = Cursor { bytes: s.as_bytes(), at: 0 };
    let year = cursor.digits(4, "a 4-digit year")?;
    cursor.expect(b'-', "`-`")?;
    let month = cursor.digits(2, "a 2-digit month")?;
    cursor.expect(b'-', "`-`")?;
    let day = cursor.digits(2, "a 2-digit day")?;
    cursor.expect(b'T', "`T`")?;
    let hour = cursor.digits(2, "2-digit hours")?;
    cursor.expect(b':', "`:`")?;
    let minute = cursor.digits(2, "2-digit minutes")?;
    cursor.expect(b':', "`:`")?;
    let second = cursor.digits(2, "2-digit seconds")?;

    let mut millis = 0;
    if cursor.peek() == Some(b'.') {
        cursor.at += 1;
        let start = cursor.at;
        // Read up to three digits as milliseconds (padding shorter fractions with zeros),
        // then skip the rest: truncation, not rounding.
        while let Some(digit) = cursor.peek().filter(u8::is_ascii_digit) {
            let position = cursor.at - start;
            if position < 3 {
                millis += i64::from(digit - b'0') * [100, 10, 1][position];
            }
            cursor.at += 1;
        }
        match cursor.at - start {
            0 => return Err(TimestampError::Syntax { expected: "a digit after `.`", at: start }),
            1..=9 => {}
            _ => return Err(TimestampError::FractionTooLong),
        }
    }

    let offset_ms = match cursor.peek() {
        None => 0,
        Some(b'Z') => {
            cursor.at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            cursor.at += 1;
            let hours = cursor.digits(2, "2-digit offset hours")?;
            cursor.expect(b':', "`:` in the offset")?;
            let minutes = cursor.digits(2, "2-digit offset minutes")?;
            if hours > 23 || minutes > 59 {
                return Err(TimestampError::InvalidOffset { hours, minutes });
            }
            let magnitude = i64::from(hours) * MS_PER_HOUR + i64::from(minutes) * MS_PER_MINUTE;
            if sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        Some(_) => return Err(TimestampError::Syntax { expected: "`.`, `Z`, `+`, `-` or the end", at: cursor.at }),
    };
    if cursor.at != s.len() {
        return Err(TimestampError::Syntax { expected: "the end", at: cursor.at });
    }

    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(TimestampError::InvalidDate { year, month, day });
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(TimestampError::InvalidTime { hour, minute, second });
    }
    let days = days_from_civil(i64::from(year), month, day);
    Ok(days * MS_PER_DAY + i64::from(hour) * MS_PER_HOUR + i64::from(minute) * MS_PER_MINUTE + i64::from(second) * MS_PER_SECOND + millis
        - offset_ms)
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, always with
/// milliseconds). [`parse_iso_timestamp`] inverts it for every instant in years 0000–9999;
/// instants outside those years are written with a signed or longer year, which the strict
/// parser does not accept.
///
/// ```
/// use encore_core::format_iso_timestamp;
/// assert_eq!(format_iso_timestamp(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
/// assert_eq!(format_iso_timestamp(-1), "1969-12-31T23:59:59.999Z");
/// ```
pub fn format_iso_timestamp(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let hour = in_day / MS_PER_HOUR;
    let minute = in_day % MS_PER_HOUR / MS_PER_MINUTE;
    let second = in_day % MS_PER_MINUTE / MS_PER_SECOND;
    let millis = in_day % MS_PER_SECOND;
    let year = if (0..=9999).contains(&year) { format!("{year:04}") } else { format!("{year:+05}") };
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// A position in the timestamp bytes; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), TimestampError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(TimestampError::Syntax { expected, at: self.at })
        }
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize, expected: &'static str) -> Result<u32, TimestampError> {
        let mut value = 0;
        for _ in 0..count {
            match self.peek() {
                Some(digit @ b'0'..=b'9') => value = value * 10 + u32::from(digit - b'0'),
                _ => return Err(TimestampError::Syntax { expected, at: self.at }),
            }
            self.at += 1;
        }
        Ok(value)
    }
}

fn is_leap_year(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01, any
/// sign (Howard Hinnant's `civil_from_days`,
/// <http://howardhinnant.github.io/date_algorithms.html>). The one copy in the workspace: the
/// generator's timestamp writer and the test line generator use it too.
///
/// ```
/// assert_eq!(encore_core::civil_from_days(0), (1970, 1, 1));
/// assert_eq!(encore_core::civil_from_days(-1), (1969, 12, 31));
/// assert_eq!(encore_core::civil_from_days(11_016), (2000, 2, 29));
/// ```
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    // Both casts are exact: day is 1..=31 and month 1..=12 by construction.
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_every_form() {
        let cases: &[(&str, i64)] = &[
            ("1970-01-01T00:00:00", 0),
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00+00:00", 0),
            ("1970-01-01T00:00:00-00:00", 0),
            ("2024-05-01T12:00:00.123Z", 1_714_564_800_123),
            ("2024-05-01T14:00:00.123+02:00", 1_714_564_800_123),
            ("2024-05-01T06:30:00.123-05:30", 1_714_564_800_123),
            ("2024-05-01T12:00:00.1Z", 1_714_564_800_100),
            ("2024-05-01T12:00:00.12Z", 1_714_564_800_120),
            ("2024-05-01T12:00:00.1239", 1_714_564_800_123),
            ("2024-05-01T12:00:00.12399Z", 1_714_564_800_123),
            ("2024-05-01T12:00:00.123999", 1_714_564_800_123),
            ("2024-05-01T12:00:00.1239999Z", 1_714_564_800_123),
            ("2024-05-01T12:00:00.12399999Z", 1_714_564_800_123),
            // Nine digits, all nines: truncated to .999, not rounded up to the next second.
            ("2024-05-01T12:00:00.999999999Z", 1_714_564_800_999),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("1969-12-31T23:59:59.999Z", -1),
            ("1970-01-01T23:59:59+23:59", 59_000),
            ("0000-01-01T00:00:00Z", -62_167_219_200_000),
            ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
        ];
        for &(input, expected) in cases {
            assert_eq!(parse_iso_timestamp(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_and_impossible_times() {
        let cases: &[(&str, &str)] = &[
            ("", "a 4-digit year"),
            ("2024-05-01t12:00:00Z", "`T`"),
            ("2024-05-01 12:00:00Z", "`T`"),
            ("2024-05-01T12:00:00z", "the end"),
            ("2024-05-01T12:00Z", "`:`"),
            ("2024-05-01T12:00", "`:`"),
            ("2024-5-01T12:00:00Z", "2-digit month"),
            ("24-05-01T12:00:00Z", "4-digit year"),
            ("+2024-05-01T12:00:00Z", "4-digit year"),
            ("2024-05-01T12:00:00.Z", "a digit after `.`"),
            ("2024-05-01T12:00:00.1234567890Z", "more than 9 digits"),
            ("2024-05-01T12:00:00+0100", "`:` in the offset"),
            ("2024-05-01T12:00:00+01", "`:` in the offset"),
            ("2024-05-01T12:00:00+24:00", "offset 24:00 out of range"),
            ("2024-05-01T12:00:00-23:60", "offset 23:60 out of range"),
            ("2024-05-01T12:00:00Z ", "the end"),
            ("2024-05-01T12:00:00ZZ", "the end"),
            (" 2024-05-01T12:00:00Z", "4-digit year"),
            ("2023-02-29T00:00:00Z", "no such date 2023-02-29"),
            ("1900-02-29T00:00:00Z", "no such date 1900-02-29"),
            ("2024-04-31T00:00:00Z", "no such date 2024-04-31"),
            ("2024-13-01T00:00:00Z", "no such date 2024-13-01"),
            ("2024-00-01T00:00:00Z", "no such date 2024-00-01"),
            ("2024-01-00T00:00:00Z", "no such date 2024-01-00"),
            ("2024-01-01T24:00:00Z", "no such time 24:00:00"),
            ("2024-01-01T23:60:00Z", "no such time 23:60:00"),
            ("2024-01-01T23:59:60Z", "no such time 23:59:60"),
            ("２024-01-01T00:00:00Z", "4-digit year"),
        ];
        for &(input, reason) in cases {
            let error = parse_iso_timestamp(input).expect_err(input);
            assert!(error.to_string().contains(reason), "{input}: {error} lacks {reason:?}");
        }
    }

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_iso_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_iso_timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_iso_timestamp(-62_167_219_200_001), "-0001-12-31T23:59:59.999Z");
        assert_eq!(format_iso_timestamp(253_402_300_800_000), "+10000-01-01T00:00:00.000Z");
        // The extremes of i64 neither panic nor overflow.
        assert!(format_iso_timestamp(i64::MIN).ends_with('Z'));
        assert!(format_iso_timestamp(i64::MAX).ends_with('Z'));
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            prop_assert_eq!(parse_iso_timestamp(&format_iso_timestamp(ms)), Ok(ms));
        }

        #[test]
        fn parse_never_panics(input in ".{0,40}") {
            let _ = parse_iso_timestamp(&input);
        }

        #[test]
        fn near_valid_strings_never_panic(input in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2})?") {
            if let Ok(ms) = parse_iso_timestamp(&input) {
                // Whatever parses lies within the instants the 4-digit years can express.
                prop_assert!((-62_167_219_200_000 - 86_400_000..253_402_300_800_000 + 86_400_000).contains(&ms));
            }
        }
    }
}
