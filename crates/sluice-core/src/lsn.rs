//! Log sequence numbers and change ids.
//!
//! `Lsn` prints as PostgreSQL does (`16/B374D848`, upper-case hex, high and low halves).
//! `ChangeId` prints as `{commit_lsn:016X}-{ordinal:06}`: fixed-width while the ordinal is
//! below a million, so ids of ordinary transactions also sort as strings; larger ordinals
//! widen, so consumers that compare ids must parse them (`ChangeId::from_str`).

use std::fmt;
use std::str::FromStr;

/// A position in PostgreSQL's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A text form that is not a valid LSN or change id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected {expected}")]
pub struct ParseError {
    what: &'static str,
    text: String,
    expected: &'static str,
}

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError {
            what: "LSN",
            text: s.to_owned(),
            expected: "two hexadecimal halves like 16/B374D848",
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// The identity of one change: the commit LSN of its transaction and its ordinal in it.
/// It is the idempotency key everywhere downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ChangeId {
    pub commit_lsn: Lsn,
    pub ordinal: u64,
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}-{:06}", self.commit_lsn.0, self.ordinal)
    }
}

impl FromStr for ChangeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError {
            what: "change id",
            text: s.to_owned(),
            expected: "16 hexadecimal digits, '-', a decimal ordinal",
        };
        let (lsn, ord) = s.split_once('-').ok_or_else(err)?;
        if lsn.len() != 16 || ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        Ok(ChangeId {
            commit_lsn: Lsn(u64::from_str_radix(lsn, 16).map_err(|_| err())?),
            ordinal: ord.parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_form() {
        for (n, s) in [
            (0u64, "0/0"),
            (0x16B3748, "0/16B3748"),
            (0x16_B374D848, "16/B374D848"),
        ] {
            assert_eq!(Lsn(n).to_string(), s);
            assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(n));
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374D848));
        for bad in ["", "/", "1/", "/1", "x/1", "123456789/0", "1-2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn change_id_matches_the_documented_form_and_orders() {
        let id = ChangeId {
            commit_lsn: Lsn(0x16B37A0),
            ordinal: 3,
        };
        assert_eq!(id.to_string(), "00000000016B37A0-000003");
        assert_eq!("00000000016B37A0-000003".parse::<ChangeId>().unwrap(), id);
        let big = ChangeId {
            commit_lsn: Lsn(0x16B37A0),
            ordinal: 5_000_000,
        };
        assert_eq!(big.to_string().parse::<ChangeId>().unwrap(), big);
        assert!(id < big);
        assert!("00000000016B37A0".parse::<ChangeId>().is_err());
        assert!("00000000016B37A0-x".parse::<ChangeId>().is_err());
    }
}
