//! `[[separate]]`: trust groups whose members must not run on the same host.
//!
//! A violation is an unordered pair of containers on this host, for one `separate` line,
//! such that one is in one of its groups and the other in another. A container in two of
//! the line's groups at once mixes them by itself: it is the pair (itself, itself).
//!
//! [`violations`] computes them from scratch (`audit`); the daemon keeps a [`Tracker`] up to
//! date instead, at a cost per event that depends on the violations the changed container
//! takes part in, not on how many containers run.

use super::{Finding, Severity};
use crate::policy::Policy;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One pair breaking one `[[separate]]` line, `a` before `b` by (name, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Violation {
    /// Index of the line in `Policy::separates`.
    pub line: usize,
    pub a: String,
    pub b: String,
    pub a_name: String,
    pub b_name: String,
    /// The line's groups each belongs to.
    pub a_groups: Vec<String>,
    pub b_groups: Vec<String>,
}

impl Violation {
    /// The line and the two ids (in id order): what identifies it whatever the names say.
    pub fn key(&self) -> (usize, String, String) {
        let (x, y) = if self.a <= self.b {
            (&self.a, &self.b)
        } else {
            (&self.b, &self.a)
        };
        (self.line, x.clone(), y.clone())
    }

    pub fn describe(&self, policy: &Policy) -> String {
        let (loc, groups) = policy
            .separates
            .get(self.line)
            .map(|s| (s.loc.to_string(), s.groups.join(", ")))
            .unwrap_or_default();
        if self.a == self.b {
            format!(
                "{} is in {} at once: [[separate]] at {loc} keeps [{groups}] apart",
                self.a_name,
                self.a_groups.join(" and ")
            )
        } else {
            format!(
                "{} ({}) and {} ({}) run on this host: [[separate]] at {loc} keeps [{groups}] apart",
                self.a_name,
                self.a_groups.join(", "),
                self.b_name,
                self.b_groups.join(", ")
            )
        }
    }

    pub fn finding(&self, policy: &Policy) -> Finding {
        let comment = policy
            .separates
            .get(self.line)
            .and_then(|s| s.comment.clone())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        Finding {
            id: "separation",
            severity: Severity::High,
            container: Some(self.a_name.clone()),
            evidence: format!("{}{comment}", self.describe(policy)),
            fix: "run one of the two on another host (or change its labels so it leaves the group)"
                .into(),
            cis: None,
        }
    }
}

/// The groups of one line a container is in (indices into the line's `groups`).
fn line_groups(policy: &Policy, line: usize, groups: &[String]) -> Vec<usize> {
    policy.separates[line]
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| groups.contains(g))
        .map(|(i, _)| i)
        .collect()
}

fn names(policy: &Policy, line: usize, idx: &[usize]) -> Vec<String> {
    idx.iter()
        .map(|&i| policy.separates[line].groups[i].clone())
        .collect()
}

fn pair(
    policy: &Policy,
    line: usize,
    x: (&str, &str, &[usize]),
    y: (&str, &str, &[usize]),
) -> Violation {
    let (x, y) = if (x.1, x.0) <= (y.1, y.0) {
        (x, y)
    } else {
        (y, x)
    };
    Violation {
        line,
        a: x.0.to_string(),
        b: y.0.to_string(),
        a_name: x.1.to_string(),
        b_name: y.1.to_string(),
        a_groups: names(policy, line, x.2),
        b_groups: names(policy, line, y.2),
    }
}

/// Two sets of a line's groups keep a pair apart when one has a group the other lacks
/// or they have two different ones between them.
fn apart(x: &[usize], y: &[usize]) -> bool {
    x.iter().any(|i| y.iter().any(|j| i != j))
}

/// Every violation among `members` (id, name, groups), sorted.
pub fn violations(policy: &Policy, members: &[(String, String, Vec<String>)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for line in 0..policy.separates.len() {
        let in_line: Vec<(&str, &str, Vec<usize>)> = members
            .iter()
            .map(|(id, name, g)| (id.as_str(), name.as_str(), line_groups(policy, line, g)))
            .filter(|(_, _, g)| !g.is_empty())
            .collect();
        for (i, x) in in_line.iter().enumerate() {
            if x.2.len() >= 2 {
                out.push(pair(policy, line, (x.0, x.1, &x.2), (x.0, x.1, &x.2)));
            }
            for y in &in_line[i + 1..] {
                if apart(&x.2, &y.2) {
                    out.push(pair(policy, line, (x.0, x.1, &x.2), (y.0, y.1, &y.2)));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The daemon's running count of violations, updated per container.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Per line, per group of the line: the members (id → name).
    members: Vec<Vec<BTreeMap<String, String>>>,
    /// Per container: (name, per line its groups there).
    of: HashMap<String, (String, Vec<Vec<usize>>)>,
    violations: BTreeMap<(usize, String, String), Violation>,
    /// Keys of the violations each container takes part in.
    by_container: HashMap<String, BTreeSet<(usize, String, String)>>,
}

impl Tracker {
    /// Starts over from every container (start, full sync, policy reload); returns the
    /// violations that were not there before.
    pub fn reset(
        &mut self,
        policy: &Policy,
        members: &[(String, String, Vec<String>)],
    ) -> Vec<Violation> {
        let before: BTreeSet<(usize, String, String)> = self.violations.keys().cloned().collect();
        *self = Tracker {
            members: policy
                .separates
                .iter()
                .map(|s| vec![BTreeMap::new(); s.groups.len()])
                .collect(),
            ..Tracker::default()
        };
        for (id, name, groups) in members {
            self.insert(policy, id, name, groups);
        }
        let all: Vec<Violation> = violations(policy, members);
        for v in &all {
            self.record(v.clone());
        }
        all.into_iter()
            .filter(|v| !before.contains(&v.key()))
            .collect()
    }

    fn insert(&mut self, policy: &Policy, id: &str, name: &str, groups: &[String]) {
        let per_line: Vec<Vec<usize>> = (0..self.members.len())
            .map(|l| line_groups(policy, l, groups))
            .collect();
        for (l, gs) in per_line.iter().enumerate() {
            for &g in gs {
                self.members[l][g].insert(id.to_string(), name.to_string());
            }
        }
        self.of.insert(id.to_string(), (name.to_string(), per_line));
    }

    fn record(&mut self, v: Violation) {
        let k = v.key();
        self.by_container
            .entry(v.a.clone())
            .or_default()
            .insert(k.clone());
        self.by_container
            .entry(v.b.clone())
            .or_default()
            .insert(k.clone());
        self.violations.insert(k, v);
    }

    /// A container is gone: its violations go with it.
    pub fn remove(&mut self, id: &str) {
        if let Some((_, per_line)) = self.of.remove(id) {
            for (l, gs) in per_line.iter().enumerate() {
                for &g in gs {
                    self.members[l][g].remove(id);
                }
            }
        }
        for k in self.by_container.remove(id).unwrap_or_default() {
            if let Some(v) = self.violations.remove(&k) {
                let other = if v.a == id { &v.b } else { &v.a };
                if let Some(set) = self.by_container.get_mut(other) {
                    set.remove(&k);
                    if set.is_empty() {
                        self.by_container.remove(other);
                    }
                }
            }
        }
    }

    /// A container started or changed its groups; returns its violations that are new.
    pub fn update(
        &mut self,
        policy: &Policy,
        id: &str,
        name: &str,
        groups: &[String],
    ) -> Vec<Violation> {
        let before = self.by_container.get(id).cloned().unwrap_or_default();
        self.remove(id);
        self.insert(policy, id, name, groups);
        let per_line = self.of.get(id).map(|(_, p)| p.clone()).unwrap_or_default();
        let mut found = Vec::new();
        for (l, mine) in per_line.iter().enumerate() {
            if mine.is_empty() {
                continue;
            }
            if mine.len() >= 2 {
                found.push(pair(policy, l, (id, name, mine), (id, name, mine)));
            }
            // Only the members of a group this container would be kept apart from.
            for (g, ms) in self.members[l].iter().enumerate() {
                if !mine.iter().any(|&i| i != g) {
                    continue;
                }
                for (other, other_name) in ms {
                    if other == id {
                        continue;
                    }
                    let theirs = self
                        .of
                        .get(other)
                        .map(|(_, p)| p[l].clone())
                        .unwrap_or_default();
                    found.push(pair(
                        policy,
                        l,
                        (id, name, mine),
                        (other, other_name, &theirs),
                    ));
                }
            }
        }
        found.sort();
        found.dedup();
        let mut new = Vec::new();
        for v in found {
            if !before.contains(&v.key()) {
                new.push(v.clone());
            }
            self.record(v);
        }
        new
    }

    pub fn count(&self) -> usize {
        self.violations.len()
    }

    pub fn all(&self) -> Vec<Violation> {
        self.violations.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;
    use std::path::Path;

    fn policy() -> Policy {
        parse_policy(
            Path::new("p.toml"),
            "[groups.a]\nmatch = { name = \"a*\" }\n[groups.b]\nmatch = { name = \"b*\" }\n\
             [groups.c]\nmatch = { name = \"c*\" }\n[groups.d]\nmatch = { name = \"d*\" }\n\
             [[separate]]\ngroups = [\"a\", \"b\", \"c\"]\n[[separate]]\ngroups = [\"c\", \"d\"]\n",
        )
        .expect("policy")
    }

    fn m(id: &str, groups: &[&str]) -> (String, String, Vec<String>) {
        (
            id.into(),
            format!("n-{id}"),
            groups.iter().map(|g| g.to_string()).collect(),
        )
    }

    fn keys(v: &[Violation]) -> Vec<(usize, String, String)> {
        let mut k: Vec<_> = v.iter().map(Violation::key).collect();
        k.sort();
        k
    }

    #[test]
    fn pairs_across_groups_of_a_line() {
        let p = policy();
        let v = violations(
            &p,
            &[
                m("1", &["a"]),
                m("2", &["a"]),
                m("3", &["b"]),
                m("4", &["c"]),
                m("5", &[]),
                m("6", &["a", "b"]),
            ],
        );
        let k = keys(&v);
        let want: Vec<(usize, String, String)> = [
            (0, "1", "3"),
            (0, "1", "4"),
            (0, "1", "6"),
            (0, "2", "3"),
            (0, "2", "4"),
            (0, "2", "6"),
            (0, "3", "4"),
            (0, "3", "6"),
            (0, "4", "6"),
            (0, "6", "6"),
        ]
        .iter()
        .map(|(l, a, b)| (*l, a.to_string(), b.to_string()))
        .collect();
        assert_eq!(k, want, "same group is fine, c and d only meet on line 1");
        let own = v
            .iter()
            .find(|x| x.a == "6" && x.b == "6")
            .expect("6 alone");
        assert_eq!(
            own.describe(&p),
            "n-6 is in a and b at once: [[separate]] at p.toml:9:1 keeps [a, b, c] apart"
        );
        let pair = v.iter().find(|x| x.a == "1" && x.b == "3").expect("1-3");
        assert_eq!(
            pair.describe(&p),
            "n-1 (a) and n-3 (b) run on this host: [[separate]] at p.toml:9:1 keeps [a, b, c] apart"
        );
        assert!(violations(&p, &[m("1", &["a"]), m("2", &["a"]), m("3", &["d"])]).is_empty());
    }

    /// xorshift: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The tracker, updated per container, always holds what a full computation finds, and
    /// reports a violation as new exactly once.
    #[test]
    fn tracker_matches_the_full_computation() {
        let p = policy();
        let all = ["a", "b", "c", "d"];
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut t = Tracker::default();
        let mut world: BTreeMap<String, Vec<String>> = BTreeMap::new();
        assert!(t.reset(&p, &[]).is_empty());
        let mut reported: BTreeSet<(usize, String, String)> = BTreeSet::new();
        for step in 0..2000 {
            let id = format!("{}", r.next(12));
            if r.next(4) == 0 {
                world.remove(&id);
                t.remove(&id);
            } else {
                let groups: Vec<String> = all
                    .iter()
                    .filter(|_| r.next(3) == 0)
                    .map(|g| g.to_string())
                    .collect();
                world.insert(id.clone(), groups.clone());
                for v in t.update(&p, &id, &format!("n-{id}"), &groups) {
                    assert!(v.a == id || v.b == id, "new only for the changed one");
                    reported.insert(v.key());
                }
            }
            let members: Vec<(String, String, Vec<String>)> = world
                .iter()
                .map(|(i, g)| (i.clone(), format!("n-{i}"), g.clone()))
                .collect();
            let want = violations(&p, &members);
            assert_eq!(keys(&t.all()), keys(&want), "step {step}");
            assert_eq!(t.count(), want.len());
            // Everything standing has been reported at some point.
            for k in keys(&want) {
                assert!(reported.contains(&k), "step {step}: {k:?} never reported");
            }
            if step % 500 == 0 {
                let fresh = t.reset(&p, &members);
                assert!(
                    fresh.is_empty(),
                    "a reset over the same world finds nothing new"
                );
            }
        }
    }
}
