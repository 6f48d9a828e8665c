//! Timestamps: PostgreSQL sends microseconds since 2000-01-01 UTC; the change record
//! carries RFC 3339 in UTC with microseconds (`2026-11-22T01:02:03.456789Z`).

/// Microseconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The wall clock in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    now_micros() / 1000
}

/// The wall clock in microseconds since 2000-01-01, PostgreSQL's epoch.
pub fn pg_now_micros() -> i64 {
    now_micros() - PG_EPOCH_OFFSET_MICROS
}

/// Converts PostgreSQL-epoch microseconds to Unix-epoch microseconds (saturating).
pub fn pg_epoch_to_unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// Appends `unix_micros` as RFC 3339 UTC with six fractional digits.
pub fn format_rfc3339_micros(unix_micros: i64, out: &mut Vec<u8>) {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    if !(0..=9999).contains(&y) {
        // Outside four-digit years RFC 3339 has no form; use ISO 8601's expanded one.
        use std::io::Write;
        let _ = write!(
            out,
            "{y:+05}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z"
        );
        return;
    }
    // Hand-rolled: this runs once per record.
    let p = crate::record::push_decimal_min;
    p(out, y as u64, 4);
    out.push(b'-');
    p(out, m as u64, 2);
    out.push(b'-');
    p(out, d as u64, 2);
    out.push(b'T');
    p(out, hh as u64, 2);
    out.push(b':');
    p(out, mm as u64, 2);
    out.push(b':');
    p(out, ss as u64, 2);
    out.push(b'.');
    p(out, micros as u64, 6);
    out.push(b'Z');
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp as the record's values
/// have them (the inverse of [`format_rfc3339_micros`] and of the values' JSON form) (`2026-11-22T01:02:03.456789`, then `Z`, an offset such as `+05:30`, or
/// nothing for a timestamp without time zone, taken as UTC). `None` for anything else.
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let d = b.get(from..from + len)?;
        d.iter().all(u8::is_ascii_digit).then(|| {
            d.iter()
                .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    // PostgreSQL's years have at most 6 digits; more could overflow below.
    if !(4..=6).contains(&year_len) {
        return None;
    }
    let year = num(0, year_len)?;
    let t = year_len;
    if b.get(t) != Some(&b'-') || b.get(t + 3) != Some(&b'-') || b.get(t + 6) != Some(&b'T') {
        return None;
    }
    let (month, day) = (num(t + 1, 2)?, num(t + 4, 2)?);
    let h = t + 7;
    if b.get(h + 2) != Some(&b':') || b.get(h + 5) != Some(&b':') {
        return None;
    }
    let (hour, min, sec) = (num(h, 2)?, num(h + 3, 2)?, num(h + 6, 2)?);
    let mut at = h + 8;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(at + 1, digits)? * 10i64.pow(6 - digits as u32);
        at += 1 + digits;
    }
    let offset_secs = match b.get(at) {
        None => 0,
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &s[at + 1..];
            let (oh, om, os) = match rest.len() {
                2 => (num(at + 1, 2)?, 0, 0),
                5 => (num(at + 1, 2)?, num(at + 4, 2)?, 0),
                8 => (num(at + 1, 2)?, num(at + 4, 2)?, num(at + 7, 2)?),
                _ => return None,
            };
            let secs = oh * 3600 + om * 60 + os;
            if sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 24 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Days since 1970-01-01 of a date as the record's values have it (`2026-11-22`, a year of
/// 4 to 6 digits); `None` for anything else (`infinity`, a BC date).
pub fn parse_date_days(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let year_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(4..=6).contains(&year_len) || b.len() != year_len + 6 {
        return None;
    }
    let num = |d: &[u8]| -> Option<i64> {
        d.iter().all(u8::is_ascii_digit).then(|| {
            d.iter()
                .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
        })
    };
    let t = year_len;
    if b[t] != b'-' || b[t + 3] != b'-' {
        return None;
    }
    let (year, month, day) = (num(&b[..t])?, num(&b[t + 1..t + 3])?, num(&b[t + 4..])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_the_values_have_them() {
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_micros("1970-01-01T00:00:01.5"),
            Some(1_500_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-11-22T01:02:03.456789Z"),
            Some(1_795_309_323_456_789)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-11-22T06:32:03.456789+05:30"),
            parse_rfc3339_micros("2026-11-22T01:02:03.456789Z")
        );
        assert_eq!(
            parse_rfc3339_micros("1969-12-31T23:59:59Z"),
            Some(-1_000_000)
        );
        for bad in [
            "infinity",
            "2026-11-22",
            "2026-13-01T00:00:00",
            "x",
            "",
            "2026-11-22T01:02:03.1234567",
        ] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_parse_as_the_values_have_them() {
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(parse_date_days("2000-03-01"), Some(11_017));
        assert_eq!(parse_date_days("1969-12-31"), Some(-1));
        assert_eq!(parse_date_days("infinity"), None);
        assert_eq!(parse_date_days("0044-03-15 BC"), None);
        assert_eq!(parse_date_days("2026-13-01"), None);
    }

    #[test]
    fn parsing_inverts_formatting() {
        for us in [
            0,
            1,
            -1,
            1_795_309_323_456_789,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
        ] {
            let mut out = Vec::new();
            format_rfc3339_micros(us, &mut out);
            assert_eq!(
                parse_rfc3339_micros(std::str::from_utf8(&out).unwrap()),
                Some(us)
            );
        }
    }

    fn fmt(us: i64) -> String {
        let mut v = Vec::new();
        format_rfc3339_micros(us, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            fmt(pg_epoch_to_unix_micros(0)),
            "2000-01-01T00:00:00.000000Z"
        );
        // 2026-11-22T01:02:03.456789Z
        assert_eq!(fmt(1_795_309_323_456_789), "2026-11-22T01:02:03.456789Z");
        assert_eq!(fmt(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(fmt(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            fmt(253_402_300_800_000_000),
            "+10000-01-01T00:00:00.000000Z"
        );
    }
}
