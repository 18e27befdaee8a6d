//! Value types of lb.toml that serde reads from strings: MACs, prefixes, port and status ranges,
//! durations. Each parse error is a [`ValueError`] that quotes the input.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a value of lb.toml could not be read; every message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not six hex bytes.
    #[error("invalid MAC address {0:?}: expected six hex bytes like \"02:00:00:00:00:01\"")]
    Mac(String),
    /// Not an address and a length of its family.
    #[error(
        "invalid prefix {0:?}: expected an address and a length (at most 32 for IPv4, 128 for \
         IPv6), like \"198.18.0.0/16\""
    )]
    Prefix(String),
    /// Neither a port nor `lo-hi`.
    #[error("invalid port range {0:?}: expected a port 1-65535 or \"lo-hi\"")]
    PortRange(String),
    /// A range that names port 0.
    #[error("invalid port range {0:?}: port 0 is not a port")]
    PortZero(String),
    /// A range whose first port is above its last.
    #[error("invalid port range {0:?}: first port is above the last")]
    PortsReversed(String),
    /// A port given as an integer outside 1-65535.
    #[error("invalid port {0}: expected 1-65535")]
    Port(i64),
    /// Not a number and a unit.
    #[error("invalid duration {0:?}: expected a number and a unit ms, s, m or h (\"5s\")")]
    Duration(String),
    /// More milliseconds than a `u64` holds.
    #[error("invalid duration {0:?}: too long")]
    DurationTooLong(String),
    /// Not an HTTP status or a range of them.
    #[error("invalid status range {0:?}: expected \"200-399\" or \"200\" (100-599)")]
    StatusRange(String),
}

/// Deserializes a string through `T`'s `FromStr`, its error becoming serde's.
fn from_string<'de, D: Deserializer<'de>, T: FromStr<Err = ValueError>>(
    d: D,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

/// An inclusive HTTP status range, written `"200-399"` or `"200"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status accepted.
    pub lo: u16,
    /// Highest status accepted.
    pub hi: u16,
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::StatusRange(s.to_string());
        let code = |p: &str| match p.trim().parse::<u16>() {
            Ok(v) if (100..=599).contains(&v) => Ok(v),
            _ => Err(bad()),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => {
                let v = code(s)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(StatusRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// A MAC address written `"02:00:00:00:00:01"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// An IP prefix, written `"198.18.0.0/16"` or `"2001:db8::/64"` (the address may have host bits
/// set: `"198.18.0.1/16"` is the link of 198.18.0.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix(pub IpNet);

impl IpPrefix {
    /// True when `a` is inside the prefix (same family).
    pub fn contains(&self, a: IpAddr) -> bool {
        self.0.contains(&a)
    }

    /// The prefix as the dataplane's table takes it.
    pub fn to_table(self) -> dataplane::table::Prefix {
        dataplane::table::Prefix {
            addr: self.0.addr().into(),
            len: self.0.prefix_len(),
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for IpPrefix {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        s.parse()
            .map(IpPrefix)
            .map_err(|_| ValueError::Prefix(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// An inclusive port range, written `"80"`, `"8000-8010"` or as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (equal to `lo` for a single port).
    pub hi: u16,
}

impl PortRange {
    /// True when the range is the single port `p`.
    pub fn is_single(&self, p: u16) -> bool {
        self.lo == p && self.hi == p
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    /// `"80"` or `"8000-8010"`: ports 1..=65535 (0 means "every port" inside the table), lo <= hi.
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) => Err(ValueError::PortZero(s.to_string())),
            Ok(v) => Ok(v),
            Err(_) => Err(ValueError::PortRange(s.to_string())),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(ValueError::PortsReversed(s.to_string()));
        }
        Ok(PortRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (80) or a port range (\"8000-8010\")")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRange { lo: p, hi: p }),
                    _ => Err(E::custom(ValueError::Port(v))),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a duration: an integer followed by `ms`, `s`, `m` or `h` (`"500ms"`, `"15m"`).
///
/// Not humantime's syntax: it also takes `M` (months) and `y`, so a `"15M"` meant as minutes
/// would be read as fifteen months; the units here are the ones docs/CONFIG.md lists.
fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration(s.to_string());
    let digits = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    if digits == 0 {
        return Err(bad());
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| ValueError::DurationTooLong(s.to_string()))?;
    Ok(Duration::from_millis(ms))
}

/// Serde's `deserialize_with` for a duration key.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected_with_the_input() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5sec",
            "1.5s",
            "-1s",
            "5d",
            "15M",
            "99999999999999999999h",
        ] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err(ValueError::DurationTooLong("18446744073709551615h".into()))
        );
    }

    #[test]
    fn port_ranges() {
        let parse = |s: &str| s.parse::<PortRange>();
        assert_eq!(parse("80"), Ok(PortRange { lo: 80, hi: 80 }));
        assert_eq!(parse("8000-8010"), Ok(PortRange { lo: 8000, hi: 8010 }));
        assert_eq!(parse("1-65535"), Ok(PortRange { lo: 1, hi: 65535 }));
        for bad in ["0", "65536", "10-5", "a", "", "1-", "-1", "1-2-3", "0-10"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("0-10"), Err(ValueError::PortZero("0-10".into())));
        assert_eq!(parse("10-5"), Err(ValueError::PortsReversed("10-5".into())));
    }

    #[test]
    fn macs() {
        assert_eq!(
            "02:00:00:00:00:fE".parse::<MacAddr>(),
            Ok(MacAddr([2, 0, 0, 0, 0, 0xfe]))
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:01",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(ValueError::Mac(bad.into())));
        }
        assert_eq!(
            MacAddr([2, 0, 0, 0, 0, 0xfe]).to_string(),
            "02:00:00:00:00:fe"
        );
    }

    #[test]
    fn prefixes_and_status_ranges() {
        let p: IpPrefix = "198.18.0.1/16".parse().unwrap();
        assert!(p.contains("198.18.200.1".parse().unwrap()));
        assert!(!p.contains("198.19.0.1".parse().unwrap()));
        assert!(!p.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(p.to_string(), "198.18.0.1/16");
        for bad in ["198.18.0.0/33", "2001:db8::/129", "198.18.0.0", "x/8", ""] {
            let err = bad.parse::<IpPrefix>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(
            "200-399".parse::<StatusRange>(),
            Ok(StatusRange { lo: 200, hi: 399 })
        );
        for bad in ["99", "600", "399-200", "2xx"] {
            assert!(bad.parse::<StatusRange>().is_err(), "{bad}");
        }
    }
}
