//! Addresses and CIDRs an allow line names outside the managed networks.

use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

/// A network: `addr` has no bits set beyond `prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an address or CIDR (such as \"203.0.113.0/24\" or \"2001:db8::/32\")")]
    Syntax(String),
    #[error("prefix /{prefix} is too long for {addr} (at most /{max})")]
    Prefix { addr: IpAddr, prefix: u32, max: u8 },
    #[error("{text:?} has bits set beyond its prefix: write {net}")]
    HostBits { text: String, net: Net },
}

impl Net {
    pub fn parse(text: &str) -> Result<Net, NetError> {
        let (a, p) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| NetError::Syntax(text.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = p.parse().map_err(|_| NetError::Syntax(text.into()))?;
                if n > u32::from(max) {
                    return Err(NetError::Prefix {
                        addr,
                        prefix: n,
                        max,
                    });
                }
                n as u8
            }
            Some(_) => return Err(NetError::Syntax(text.into())),
        };
        let net = Net {
            addr: mask(addr, prefix),
            prefix,
        };
        if net.addr != addr {
            return Err(NetError::HostBits {
                text: text.into(),
                net,
            });
        }
        Ok(net)
    }

    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv6() == self.is_v6() && mask(a, self.prefix) == self.addr
    }

    /// The first and last address it covers (the form an nft interval set holds).
    pub fn range(&self) -> (IpAddr, IpAddr) {
        match self.addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                (IpAddr::V4(a), IpAddr::V4((u32::from(a) | host).into()))
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                (IpAddr::V6(a), IpAddr::V6((u128::from(a) | host).into()))
            }
        }
    }
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v) & m).into())
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.is_v6() { 128 } else { 32 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_cidrs() {
        assert_eq!(
            Net::parse("203.0.113.0/24").map(|n| n.to_string()),
            Ok("203.0.113.0/24".into())
        );
        assert_eq!(Net::parse("198.51.100.7").map(|n| n.prefix), Ok(32));
        assert_eq!(
            Net::parse("2001:db8:1::/48").map(|n| n.to_string()),
            Ok("2001:db8:1::/48".into())
        );
        assert_eq!(Net::parse("0.0.0.0/0").map(|n| n.prefix), Ok(0));
        assert_eq!(Net::parse("::/0").map(|n| n.prefix), Ok(0));
    }

    #[test]
    fn rejects_bad_ones() {
        assert!(matches!(Net::parse("web"), Err(NetError::Syntax(_))));
        assert!(matches!(Net::parse("10.0.0.0/"), Err(NetError::Syntax(_))));
        assert!(matches!(
            Net::parse("10.0.0.0/+8"),
            Err(NetError::Syntax(_))
        ));
        assert!(matches!(
            Net::parse("10.0.0.0/33"),
            Err(NetError::Prefix { .. })
        ));
        assert_eq!(
            Net::parse("203.0.113.5/24").map_err(|e| e.to_string()),
            Err("\"203.0.113.5/24\" has bits set beyond its prefix: write 203.0.113.0/24".into())
        );
    }

    #[test]
    fn contains_and_range() {
        let n = Net::parse("203.0.113.0/24").unwrap();
        assert!(n.contains("203.0.113.5".parse().unwrap()));
        assert!(!n.contains("203.0.114.5".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(
            n.range(),
            (
                "203.0.113.0".parse().unwrap(),
                "203.0.113.255".parse().unwrap()
            )
        );
        let all = Net::parse("::/0").unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
    }
}
