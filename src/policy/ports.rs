//! Port specs: `"PORT/PROTO"`, `"LOW-HIGH/PROTO"`, `"icmp"`.

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    /// ICMP echo (ping) for IPv4 and ICMPv6 echo for IPv6.
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    /// Inclusive range; `(0, 0)` for ICMP.
    pub low: u16,
    pub high: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error(
        "bad port spec {0:?}: expected \"PORT/PROTO\", \"LOW-HIGH/PROTO\" or \"icmp\" (e.g. \"8080/tcp\", \"9000-9100/udp\")"
    )]
    Syntax(String),
    #[error("bad port {0:?} in {1:?}: expected a number from 1 to 65535")]
    BadPort(String, String),
    #[error(
        "bad port range in {0:?}: {1} is greater than {2}; expected LOW-HIGH with LOW <= HIGH (e.g. \"{2}-{1}\")"
    )]
    Reversed(String, u16, u16),
    #[error("unknown protocol {0:?} in {1:?}: expected tcp, udp or sctp (or the spec \"icmp\")")]
    UnknownProto(String, String),
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<PortSpec, PortSpecError> {
        let s = spec.trim();
        if s.eq_ignore_ascii_case("icmp") {
            return Ok(PortSpec {
                proto: Proto::Icmp,
                low: 0,
                high: 0,
            });
        }
        let (ports, proto) = s
            .split_once('/')
            .ok_or_else(|| PortSpecError::Syntax(spec.into()))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            "" => return Err(PortSpecError::Syntax(spec.into())),
            other => return Err(PortSpecError::UnknownProto(other.into(), spec.into())),
        };
        let port = |p: &str| -> Result<u16, PortSpecError> {
            let bad = || PortSpecError::BadPort(p.into(), spec.into());
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(bad()),
            }
        };
        let (low, high) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if low > high {
            return Err(PortSpecError::Reversed(spec.into(), low, high));
        }
        Ok(PortSpec { proto, low, high })
    }

    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && (proto == Proto::Icmp || (self.low..=self.high).contains(&port))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Icmp => f.write_str("icmp"),
            p if self.low == self.high => write!(f, "{}/{}", self.low, p.as_str()),
            p => write!(f, "{}-{}/{}", self.low, self.high, p.as_str()),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_specs() {
        assert_eq!(
            PortSpec::parse("8080/tcp").unwrap(),
            PortSpec {
                proto: Proto::Tcp,
                low: 8080,
                high: 8080
            }
        );
        assert_eq!(
            PortSpec::parse("9000-9100/UDP").unwrap(),
            PortSpec {
                proto: Proto::Udp,
                low: 9000,
                high: 9100
            }
        );
        assert_eq!(PortSpec::parse("icmp").unwrap().proto, Proto::Icmp);
        assert_eq!(
            PortSpec::parse("1-65535/tcp").unwrap().to_string(),
            "1-65535/tcp"
        );
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            PortSpec::parse("0/tcp"),
            Err(PortSpecError::BadPort(..))
        ));
        assert!(matches!(
            PortSpec::parse("65536/tcp"),
            Err(PortSpecError::BadPort(..))
        ));
        assert!(matches!(
            PortSpec::parse("+5/tcp"),
            Err(PortSpecError::BadPort(..))
        ));
        assert!(matches!(
            PortSpec::parse("20-10/tcp"),
            Err(PortSpecError::Reversed(..))
        ));
        assert!(matches!(
            PortSpec::parse("80/foo"),
            Err(PortSpecError::UnknownProto(..))
        ));
        assert!(matches!(
            PortSpec::parse("80"),
            Err(PortSpecError::Syntax(..))
        ));
        assert!(matches!(
            PortSpec::parse("80/"),
            Err(PortSpecError::Syntax(..))
        ));
    }
}
