//! What an allow rule opens ([`Service`]) and what one container may open to another
//! ([`Access`], per IP version [`PairAccess`]): the values [`super::access`] and
//! [`super::edges`] read rules into, and `diff`, `graph` and `explain` compare.

use crate::nft::live::LiveValue;
use crate::plan::ruleset::{Elem, merge_ranges};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What one allow rule opens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    All,
    Icmp,
    Ports {
        proto: String,
        ranges: Vec<(u16, u16)>,
    },
}

/// The ports a `dport` match's right side names: a number, a range, an anonymous set of
/// those, or `@name`, a named port set of the table (`sets`).
pub fn port_ranges(
    v: &LiveValue,
    sets: &BTreeMap<String, BTreeSet<Elem>>,
) -> Option<Vec<(u16, u16)>> {
    if let Some(name) = v.set_ref() {
        return sets
            .get(name)?
            .iter()
            .map(|e| match e {
                Elem::Port(lo, hi) => Some((*lo, *hi)),
                _ => None,
            })
            .collect();
    }
    match v {
        LiveValue::Ports(ranges) => Some(ranges.clone()),
        _ => None,
    }
}

/// What one direction of one container pair may open, for one IP version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Access {
    pub all: bool,
    pub icmp: bool,
    /// Protocol → sorted, merged inclusive port ranges.
    pub ports: BTreeMap<String, Vec<(u16, u16)>>,
}

fn subtract(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut pieces = vec![(u32::from(lo), u32::from(hi))];
        for &(blo, bhi) in b {
            let (blo, bhi) = (u32::from(blo), u32::from(bhi));
            pieces = pieces
                .into_iter()
                .flat_map(|(l, h)| {
                    let mut v = Vec::new();
                    if bhi < l || blo > h {
                        v.push((l, h));
                    } else {
                        if blo > l {
                            v.push((l, blo - 1));
                        }
                        if bhi < h {
                            v.push((bhi + 1, h));
                        }
                    }
                    v
                })
                .collect();
        }
        out.extend(pieces.into_iter().map(|(l, h)| (l as u16, h as u16)));
    }
    out
}

fn range_label(proto: &str, (lo, hi): (u16, u16)) -> String {
    if (lo, hi) == (0, 65535) {
        format!("all {proto}")
    } else if lo == hi {
        format!("{lo}/{proto}")
    } else {
        format!("{lo}-{hi}/{proto}")
    }
}

impl Access {
    pub fn everything() -> Access {
        Access {
            all: true,
            ..Default::default()
        }
    }

    pub fn add(&mut self, s: &Service) {
        match s {
            Service::All => self.all = true,
            Service::Icmp => self.icmp = true,
            Service::Ports { proto, ranges } => {
                let r = self.ports.entry(proto.clone()).or_default();
                r.extend(ranges.iter().copied());
                *r = merge_ranges(std::mem::take(r));
            }
        }
    }

    pub fn union(&mut self, other: &Access) {
        self.all |= other.all;
        self.icmp |= other.icmp;
        for (p, r) in &other.ports {
            let mine = self.ports.entry(p.clone()).or_default();
            mine.extend(r.iter().copied());
            *mine = merge_ranges(std::mem::take(mine));
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && !self.icmp && self.ports.values().all(Vec::is_empty)
    }

    /// `8080/tcp`, `9000-9010/tcp`, `icmp`, or `all`.
    pub fn labels(&self) -> Vec<String> {
        if self.all {
            return vec!["all".into()];
        }
        let mut v: Vec<String> = self
            .ports
            .iter()
            .flat_map(|(p, rs)| rs.iter().map(move |r| range_label(p, *r)))
            .collect();
        if self.icmp {
            v.push("icmp".into());
        }
        v
    }

    /// Labels of what `self` allows and `other` does not.
    pub fn minus(&self, other: &Access) -> Vec<String> {
        if other.all {
            return vec![];
        }
        if self.all {
            return if other.is_empty() {
                vec!["all".into()]
            } else {
                vec![format!("all except {}", other.labels().join(", "))]
            };
        }
        let mut v = Vec::new();
        for (p, rs) in &self.ports {
            let theirs = other.ports.get(p).map(Vec::as_slice).unwrap_or(&[]);
            v.extend(subtract(rs, theirs).into_iter().map(|r| range_label(p, r)));
        }
        if self.icmp && !other.icmp {
            v.push("icmp".into());
        }
        v
    }

    pub fn allows(&self, proto: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        if proto == "icmp" {
            return self.icmp;
        }
        self.ports
            .get(proto)
            .is_some_and(|rs| rs.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)))
    }
}

/// One direction of one container pair: per IP version, `None` when the two have no
/// addresses of that version on a common bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairAccess {
    pub v4: Option<Access>,
    pub v6: Option<Access>,
}

/// `(from container, to container)` → what `from` may open to `to`.
pub type Matrix = BTreeMap<(String, String), PairAccess>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_arithmetic() {
        let mut a = Access::default();
        a.add(&Service::Ports {
            proto: "tcp".into(),
            ranges: vec![(9000, 9010), (8080, 8080), (8081, 8081)],
        });
        assert_eq!(a.labels(), vec!["8080-8081/tcp", "9000-9010/tcp"]);
        let mut b = Access::default();
        b.add(&Service::Ports {
            proto: "tcp".into(),
            ranges: vec![(9005, 9005)],
        });
        assert_eq!(
            a.minus(&b),
            vec!["8080-8081/tcp", "9000-9004/tcp", "9006-9010/tcp"]
        );
        assert_eq!(Access::everything().minus(&b), vec!["all except 9005/tcp"]);
        assert!(b.minus(&Access::everything()).is_empty());
        assert!(a.allows("tcp", 9003) && !a.allows("udp", 9003));
    }
}
