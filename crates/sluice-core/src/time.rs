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

#[cfg(test)]
mod tests {
    use super::*;

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
