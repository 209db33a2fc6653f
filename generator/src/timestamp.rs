//! Writing SPEC §1 timestamps into a byte buffer without allocating.
//!
//! `encore_core::format_iso_timestamp` returns a `String`; the generator's hot loop writes the
//! same text straight into its reused payload buffer instead.

use encore_core::civil_from_days;

#[inline]
fn push_digits(buf: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut v = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmm` for `ms` (ms since the epoch, ≥ 0, year < 10000),
/// shifted by `offset_minutes` (local wall-clock time), without a zone designator.
pub(crate) fn push_local_datetime(buf: &mut Vec<u8>, ms: i64, offset_minutes: i32) {
    let local = ms + i64::from(offset_minutes) * 60_000;
    let days = local.div_euclid(86_400_000);
    let ms_of_day = local.rem_euclid(86_400_000) as u64;
    let (year, month, day) = civil_from_days(days);
    push_digits(buf, year.clamp(0, 9999) as u64, 4);
    buf.push(b'-');
    push_digits(buf, u64::from(month), 2);
    buf.push(b'-');
    push_digits(buf, u64::from(day), 2);
    buf.push(b'T');
    push_digits(buf, ms_of_day / 3_600_000, 2);
    buf.push(b':');
    push_digits(buf, ms_of_day / 60_000 % 60, 2);
    buf.push(b':');
    push_digits(buf, ms_of_day / 1000 % 60, 2);
    buf.push(b'.');
    push_digits(buf, ms_of_day % 1000, 3);
}

/// Appends an offset designator: `Z` for 0 minutes, else `+hh:mm` / `-hh:mm`.
pub(crate) fn push_offset(buf: &mut Vec<u8>, offset_minutes: i32) {
    if offset_minutes == 0 {
        buf.push(b'Z');
        return;
    }
    buf.push(if offset_minutes < 0 { b'-' } else { b'+' });
    let m = offset_minutes.unsigned_abs();
    push_digits(buf, u64::from(m / 60), 2);
    buf.push(b':');
    push_digits(buf, u64::from(m % 60), 2);
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (the original producer's form).
pub fn iso_utc(ms: i64) -> String {
    let mut buf = Vec::with_capacity(24);
    push_local_datetime(&mut buf, ms, 0);
    push_offset(&mut buf, 0);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_714_521_600_123), "2024-05-01T00:00:00.123Z");
        assert_eq!(iso_utc(951_825_600_000), "2000-02-29T12:00:00.000Z");
        assert_eq!(iso_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn local_time_with_offsets() {
        let mut buf = Vec::new();
        push_local_datetime(&mut buf, 1_714_521_600_123, 330);
        push_offset(&mut buf, 330);
        assert_eq!(buf, b"2024-05-01T05:30:00.123+05:30");
        buf.clear();
        push_local_datetime(&mut buf, 1_714_521_600_123, -300);
        push_offset(&mut buf, -300);
        assert_eq!(buf, b"2024-04-30T19:00:00.123-05:00");
    }

    #[test]
    fn day_numbers_round_trip_through_the_calendar() {
        // Every day of 1960..2100 maps to a valid, strictly increasing date.
        let mut previous = (1959, 12, 31);
        for days in -3653..47_482 {
            let date = civil_from_days(days);
            assert!(date > previous, "{days}: {date:?} after {previous:?}");
            assert!((1..=12).contains(&date.1) && (1..=31).contains(&date.2));
            previous = date;
        }
    }
}
