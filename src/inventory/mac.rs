//! Ethernet addresses, as the sources report them and netguard binds them.

use serde::Serialize;

/// An Ethernet address. Written `aa:bb:cc:dd:ee:ff` (lower case), as Docker and Podman
/// report it and nft prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;

    /// Six hex octets separated by `:` (or `-`), either case.
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad =
            || format!("{s:?} is not a MAC address (expected six hex octets, aa:bb:cc:dd:ee:ff)");
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(m))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Mac {
    /// A unicast address other than all zeros: the only kind a port can own. A group
    /// (multicast) address as a frame's source is never legitimate.
    pub fn is_ownable(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_in_either_case_and_print_in_lower_case() {
        let m: Mac = "02:42:AC:11:00:0b".parse().unwrap();
        assert_eq!(m.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x0b]);
        assert_eq!(m.to_string(), "02:42:ac:11:00:0b");
        assert_eq!("02-42-ac-11-00-0b".parse::<Mac>(), Ok(m));
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0b:01",
            "2:42:ac:11:00:0b",
            "zz:42:ac:11:00:0b",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_unicast_non_zero_macs_are_ownable() {
        assert!("02:42:ac:11:00:0b".parse::<Mac>().unwrap().is_ownable());
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_ownable());
        assert!(!"ff:ff:ff:ff:ff:ff".parse::<Mac>().unwrap().is_ownable());
        assert!(!"00:00:00:00:00:00".parse::<Mac>().unwrap().is_ownable());
    }
}
