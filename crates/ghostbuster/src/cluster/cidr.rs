//! IP prefixes (service CIDRs).
//!
//! A flow to an address inside a service CIDR that matches no Service frontend is a flow to a
//! deleted Service (kubernetes#141371); outside every service CIDR it is not service traffic.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP prefix such as `10.96.0.0/12` or `fd00:10:96::/108`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: expected ADDRESS/PREFIX such as 10.96.0.0/12 or fd00::/108")]
pub struct CidrError {
    input: String,
}

impl Cidr {
    /// A prefix; host bits of `addr` are cleared. `None` when `prefix` is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (bits, masked) = match addr {
            IpAddr::V4(a) => {
                let m = mask32(prefix)?;
                (32, IpAddr::from((u32::from(a) & m).to_be_bytes()))
            }
            IpAddr::V6(a) => {
                let m = mask128(prefix)?;
                (128, IpAddr::from((u128::from(a) & m).to_be_bytes()))
            }
        };
        (prefix <= bits).then_some(Cidr {
            addr: masked,
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(self.prefix).is_some_and(|m| u32::from(*ip) & m == u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(self.prefix).is_some_and(|m| u128::from(*ip) & m == u128::from(net))
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> Option<u32> {
    match prefix {
        0 => Some(0),
        1..=32 => Some(u32::MAX << (32 - prefix)),
        _ => None,
    }
}

fn mask128(prefix: u8) -> Option<u128> {
    match prefix {
        0 => Some(0),
        1..=128 => Some(u128::MAX << (128 - prefix)),
        _ => None,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError {
            input: s.to_owned(),
        };
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_by_family_and_prefix() {
        let v4: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(v4.contains(&ip("10.96.0.1")));
        assert!(v4.contains(&ip("10.111.255.255")));
        assert!(!v4.contains(&ip("10.112.0.0")));
        assert!(!v4.contains(&ip("::ffff:10.96.0.1")));
        let v6: Cidr = "fd00:10:96::/108".parse().unwrap();
        assert!(v6.contains(&ip("fd00:10:96::a")));
        assert!(!v6.contains(&ip("fd00:10:97::a")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&ip("192.0.2.1")));
    }

    #[test]
    fn host_bits_are_cleared_and_bad_input_rejected() {
        let c: Cidr = "10.96.3.7/12".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        for bad in [
            "10.96.0.0",
            "10.96.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
