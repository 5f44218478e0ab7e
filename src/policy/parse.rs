//! TOML → validated [`Policy`], every error located at FILE:LINE:COL.
//!
//! We walk `toml`'s spanned document tree (`DeTable`) by hand instead of deriving
//! `Deserialize`: serde stops at the first problem and its messages name Rust types, while
//! ops need every mistake in one run, each pointing at the exact string that is wrong.

use super::{
    Allow, EdgeDefault, Glob, Group, Net, Peers, Policy, PortSpec, Selector, Separate, Settings,
};
use crate::loc::Loc;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{loc}: {message}")]
pub struct PolicyError {
    pub loc: Loc,
    pub message: String,
}

/// All problems found in one policy file (at least one), in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub fn load_policy(path: &Path) -> Result<Policy, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            loc: Loc {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
            },
            message: format!("cannot read policy: {e}"),
        }])
    })?;
    parse_policy(path, &text)
}

/// Parses and validates policy text; `path` only names locations in errors.
pub fn parse_policy(path: &Path, text: &str) -> Result<Policy, PolicyErrors> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        // After a syntax error the tree is incomplete, so anything we said about its
        // meaning could be a consequence of the syntax error rather than a real mistake.
        Err(e) => return Err(PolicyErrors(vec![syntax_error(path, text, &e)])),
    };
    let mut p = Parser {
        path,
        text,
        errors: Vec::new(),
    };
    let policy = p.policy(root.get_ref());
    if p.errors.is_empty() {
        return Ok(policy);
    }
    // Stable sort: errors found at one spot keep the order they were found in.
    p.errors.sort_by_key(|(offset, _)| *offset);
    Err(PolicyErrors(
        p.errors
            .into_iter()
            .map(|(offset, message)| PolicyError {
                loc: Loc::at(path, text, offset),
                message,
            })
            .collect(),
    ))
}

/// Remarks about a valid policy that are worth showing but do not make it wrong.
pub fn warnings(policy: &Policy) -> Vec<String> {
    let used: BTreeSet<&str> = policy
        .allows
        .iter()
        .flat_map(|a| [&a.from, &a.to])
        .filter_map(|p| match p {
            Peers::Groups(g) => Some(g),
            _ => None,
        })
        .flatten()
        .map(String::as_str)
        .collect();
    policy
        .groups
        .values()
        .filter(|g| !used.contains(g.name.as_str()))
        .map(|g| {
            format!(
                "{}: group {:?} is not used by any [[allow]] entry: its members only get what \"*\" gives them",
                g.loc, g.name
            )
        })
        .collect()
}

const TOP_KEYS: &[&str] = &["version", "settings", "groups", "allow", "separate"];
const SETTINGS_KEYS: &[&str] = &[
    "networks",
    "anti_spoofing",
    "log_denied",
    "host",
    "egress",
    "ingress",
    "admission_hold",
    "admission_queue",
];
const GROUP_KEYS: &[&str] = &["match", "mac_binding"];
const SELECTOR_KEYS: &[&str] = &["name", "image", "network", "label"];
const ALLOW_KEYS: &[&str] = &["from", "to", "within", "ports", "comment"];
const SEPARATE_KEYS: &[&str] = &["groups", "comment"];

type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

struct Parser<'t> {
    path: &'t Path,
    text: &'t str,
    /// (byte offset, message); turned into locations once, at the end.
    errors: Vec<(usize, String)>,
}

impl Parser<'_> {
    fn loc(&self, offset: usize) -> Loc {
        Loc::at(self.path, self.text, offset)
    }

    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span.start, message.into()));
    }

    /// A table written as a `[header]` is best located at its header; an inline or dotted
    /// one at the key that names it.
    fn table_start(&self, key: &Key<'_>, value: &Value<'_>) -> usize {
        let span = value.span();
        if self
            .text
            .get(span.start..)
            .is_some_and(|s| s.starts_with('['))
        {
            span.start
        } else {
            key.span().start
        }
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, expected: &[&str], context: &str) {
        for (key, _) in table.iter() {
            let k = key.get_ref().as_ref();
            if expected.contains(&k) {
                continue;
            }
            let hint = closest(k, expected.iter().copied())
                .map(|c| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            self.err(
                key.span(),
                format!(
                    "unknown key {k:?} {context}{hint}; expected {}",
                    one_of(expected)
                ),
            );
        }
    }

    fn type_error(&mut self, key: &str, value: &Value<'_>, expected: &str) {
        self.err(
            value.span(),
            format!(
                "{key:?} must be {expected}, found {}",
                describe(value.get_ref())
            ),
        );
    }

    fn policy(&mut self, root: &DeTable<'_>) -> Policy {
        self.unknown_keys(root, TOP_KEYS, "at the top level");
        if let Some(v) = root.get("version") {
            self.version(v);
        }
        let settings = match root.get("settings") {
            Some(v) => self.settings(v),
            None => Settings::default(),
        };
        let groups = match root.get("groups") {
            Some(v) => self.groups(v),
            None => BTreeMap::new(),
        };
        let allows = match root.get("allow") {
            Some(v) => self.allows(v, &groups),
            None => Vec::new(),
        };
        let separates = match root.get("separate") {
            Some(v) => self.separates(v, &groups),
            None => Vec::new(),
        };
        Policy {
            version: 1,
            settings,
            groups,
            allows,
            separates,
        }
    }

    fn version(&mut self, v: &Value<'_>) {
        match v.get_ref() {
            DeValue::Integer(i) => {
                if i64::from_str_radix(i.as_str(), i.radix()) != Ok(1) {
                    self.err(
                        v.span(),
                        format!(
                            "unsupported policy version {}: this netguard understands version 1 only",
                            i.as_str()
                        ),
                    );
                }
            }
            _ => self.type_error("version", v, "the integer 1"),
        }
    }

    fn settings(&mut self, v: &Value<'_>) -> Settings {
        let mut s = Settings::default();
        let Some(table) = v.get_ref().as_table() else {
            self.type_error("settings", v, "a table ([settings])");
            return s;
        };
        self.unknown_keys(table, SETTINGS_KEYS, "in [settings]");
        if let Some(v) = table.get("networks") {
            match v.get_ref() {
                DeValue::Array(items) if items.is_empty() => self.err(
                    v.span(),
                    "networks = [] manages no network at all; omit \"networks\" to manage every bridge network",
                ),
                DeValue::Array(items) => {
                    s.networks = items
                        .iter()
                        .filter_map(|item| self.glob("networks", item))
                        .collect();
                }
                _ => self.type_error(
                    "networks",
                    v,
                    "a list of network name globs such as [\"app-*\"]",
                ),
            }
        }
        if let Some(v) = table.get("anti_spoofing") {
            s.anti_spoofing = self.boolean("anti_spoofing", v).unwrap_or(s.anti_spoofing);
        }
        if let Some(v) = table.get("log_denied") {
            s.log_denied = self.boolean("log_denied", v).unwrap_or(s.log_denied);
        }
        if let Some(v) = table.get("admission_hold") {
            s.admission_hold = self
                .boolean("admission_hold", v)
                .unwrap_or(s.admission_hold);
        }
        if let Some(v) = table.get("admission_queue") {
            match v.get_ref() {
                DeValue::Integer(i) => match u16::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => s.admission_queue = n,
                    Err(_) => self.err(
                        v.span(),
                        format!(
                            "admission_queue = {} is not a queue number: an NFQUEUE number is 0 to 65535",
                            i.as_str()
                        ),
                    ),
                },
                _ => self.type_error(
                    "admission_queue",
                    v,
                    "an NFQUEUE number (an integer, 0 to 65535)",
                ),
            }
        }
        for (key, slot) in [
            ("host", &mut s.host),
            ("egress", &mut s.egress),
            ("ingress", &mut s.ingress),
        ] {
            if let Some(v) = table.get(key) {
                match v.get_ref().as_str() {
                    Some("allow") => *slot = EdgeDefault::Allow,
                    Some("deny") => *slot = EdgeDefault::Deny,
                    _ => self.type_error(key, v, "\"allow\" or \"deny\""),
                }
            }
        }
        s
    }

    fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        let b = v.get_ref().as_bool();
        if b.is_none() {
            self.type_error(key, v, "a boolean (true or false)");
        }
        b
    }

    /// A glob from a string value, located at that string when it does not compile.
    fn glob(&mut self, key: &str, v: &Value<'_>) -> Option<Glob> {
        let Some(s) = v.get_ref().as_str() else {
            self.type_error(key, v, "a string (a glob with `*` and `?`)");
            return None;
        };
        match Glob::new(s) {
            Ok(g) => Some(g),
            Err(e) => {
                self.err(v.span(), format!("bad glob {s:?} in {key:?}: {e}"));
                None
            }
        }
    }

    fn groups(&mut self, v: &Value<'_>) -> BTreeMap<String, Group> {
        let mut groups = BTreeMap::new();
        let Some(table) = v.get_ref().as_table() else {
            self.type_error("groups", v, "a table of groups ([groups.NAME])");
            return groups;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if let Err(why) = check_group_name(name) {
                self.err(key.span(), why);
            }
            let loc_offset = self.table_start(key, value);
            let selectors = self.group_body(name, value, loc_offset);
            let mac_binding = value
                .get_ref()
                .as_table()
                .and_then(|t| t.get("mac_binding"))
                .and_then(|v| self.boolean("mac_binding", v))
                .unwrap_or(true);
            groups.insert(
                name.to_string(),
                Group {
                    name: name.to_string(),
                    selectors,
                    mac_binding,
                    loc: self.loc(loc_offset),
                },
            );
        }
        groups
    }

    fn group_body(&mut self, name: &str, v: &Value<'_>, at: usize) -> Vec<Selector> {
        let Some(table) = v.get_ref().as_table() else {
            self.err(
                v.span(),
                format!(
                    "group {name:?} must be a table with a \"match\" key, found {}",
                    describe(v.get_ref())
                ),
            );
            return Vec::new();
        };
        self.unknown_keys(table, GROUP_KEYS, &format!("in group {name:?}"));
        let Some(m) = table.get("match") else {
            self.err(
                at..at,
                format!(
                    "group {name:?} has no \"match\": give a selector such as match = {{ label = {{ role = {name:?} }} }}"
                ),
            );
            return Vec::new();
        };
        match m.get_ref() {
            DeValue::Table(t) => self.selector(t, m.span()).into_iter().collect(),
            DeValue::Array(items) if items.is_empty() => {
                self.err(
                    m.span(),
                    "match = [] matches no container: give a selector or a list of selectors",
                );
                Vec::new()
            }
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(t) => self.selector(t, item.span()),
                    _ => {
                        self.type_error(
                            "match",
                            item,
                            "a list of selector tables such as { name = \"api-*\" }",
                        );
                        None
                    }
                })
                .collect(),
            _ => {
                self.type_error(
                    "match",
                    m,
                    "a selector table such as { image = \"postgres*\" }, or a list of them",
                );
                Vec::new()
            }
        }
    }

    fn selector(&mut self, table: &DeTable<'_>, span: Range<usize>) -> Option<Selector> {
        if table.is_empty() {
            // An empty selector would match every container, which is never what was meant.
            self.err(
                span,
                format!(
                    "empty selector: give at least one of {} (without any, it would match every container)",
                    list(SELECTOR_KEYS)
                ),
            );
            return None;
        }
        self.unknown_keys(table, SELECTOR_KEYS, "in selector");
        let mut sel = Selector {
            name: None,
            image: None,
            labels: BTreeMap::new(),
            network: None,
            loc: self.loc(span.start),
        };
        let errors_before = self.errors.len();
        sel.name = table.get("name").and_then(|v| self.glob("name", v));
        sel.image = table.get("image").and_then(|v| self.glob("image", v));
        sel.network = table.get("network").and_then(|v| self.glob("network", v));
        if let Some(v) = table.get("label") {
            match v.get_ref() {
                DeValue::Table(labels) if labels.is_empty() => self.err(
                    v.span(),
                    "label = {} requires no label: give at least one KEY = \"GLOB\" (\"*\" means the label is present)",
                ),
                DeValue::Table(labels) => {
                    for (k, lv) in labels.iter() {
                        if k.get_ref().is_empty() {
                            self.err(k.span(), "empty label key");
                            continue;
                        }
                        if let Some(g) = self.glob(&format!("label {}", k.get_ref()), lv) {
                            sel.labels.insert(k.get_ref().to_string(), g);
                        }
                    }
                }
                _ => self.type_error(
                    "label",
                    v,
                    "a table of label globs such as { role = \"web\" }",
                ),
            }
        }
        (self.errors.len() == errors_before).then_some(sel)
    }

    fn allows(&mut self, v: &Value<'_>, groups: &BTreeMap<String, Group>) -> Vec<Allow> {
        let Some(items) = v.get_ref().as_array() else {
            self.err(
                v.span(),
                format!(
                    "\"allow\" must be a list of entries, found {}: write [[allow]] (two brackets) before each entry",
                    describe(v.get_ref())
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::Table(t) => self.allow(t, item.span(), groups),
                _ => {
                    self.type_error("allow", item, "a list of tables ([[allow]] entries)");
                    None
                }
            })
            .collect()
    }

    fn allow(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        groups: &BTreeMap<String, Group>,
    ) -> Option<Allow> {
        let errors_before = self.errors.len();
        self.unknown_keys(table, ALLOW_KEYS, "in [[allow]]");
        let from = table.get_key_value("from");
        let to = table.get_key_value("to");
        let within = table.get_key_value("within");

        let (from_peers, to_peers, is_within) = match (from, to, within) {
            (_, _, Some((wk, wv))) => {
                if from.is_some() || to.is_some() {
                    self.err(
                        wk.span(),
                        "\"within\" cannot be combined with \"from\"/\"to\": use within = \"GROUP\" for a trust group, or from/to for a one-way flow",
                    );
                }
                let g = self.within(wv, groups);
                (g.clone(), g, true)
            }
            (Some((_, fv)), Some((_, tv)), None) => {
                let f = self.peers("from", fv, groups);
                let t = self.peers("to", tv, groups);
                self.placement(f.as_ref(), fv, t.as_ref(), tv);
                (f, t, false)
            }
            (Some((fk, _)), None, None) => {
                self.err(
                    fk.span(),
                    "\"from\" without \"to\": say where the traffic may go (a group, a list of groups, or \"*\")",
                );
                (None, None, false)
            }
            (None, Some((tk, _)), None) => {
                self.err(
                    tk.span(),
                    "\"to\" without \"from\": say where the traffic may come from (a group, a list of groups, or \"*\")",
                );
                (None, None, false)
            }
            (None, None, None) => {
                self.err(
                    span.clone(),
                    "allow entry needs \"from\" and \"to\", or \"within\"",
                );
                (None, None, false)
            }
        };

        // Absent means all traffic; a present but invalid list has been reported, and the
        // error count below keeps it from turning into "all traffic".
        let ports = table.get("ports").and_then(|v| self.ports(v));
        let comment = match table.get("comment") {
            Some(v) => match v.get_ref().as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    self.type_error("comment", v, "a string");
                    None
                }
            },
            None => None,
        };
        if self.errors.len() != errors_before {
            return None;
        }
        Some(Allow {
            from: from_peers?,
            to: to_peers?,
            within: is_within,
            ports,
            comment,
            loc: self.loc(span.start),
        })
    }

    fn within(&mut self, v: &Value<'_>, groups: &BTreeMap<String, Group>) -> Option<Peers> {
        match v.get_ref().as_str() {
            Some("*") => {
                self.err(
                    v.span(),
                    "within = \"*\" would switch isolation off: name one trust group, or write from = \"*\" and to = \"*\" if that is really meant",
                );
                None
            }
            Some(s) if edge_peer(s).is_some() => {
                self.err(
                    v.span(),
                    format!(
                        "within takes one trust group, not {s:?}: write from = \"GROUP\" and to = {s:?} for a flow to an edge"
                    ),
                );
                None
            }
            Some(_) => {
                let name = self.group_ref("within", v, groups)?;
                Some(Peers::Groups(vec![name]))
            }
            None => {
                self.type_error("within", v, "one group name (a string)");
                None
            }
        }
    }

    fn peers(
        &mut self,
        key: &str,
        v: &Value<'_>,
        groups: &BTreeMap<String, Group>,
    ) -> Option<Peers> {
        match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "*" => Some(Peers::Any),
            DeValue::String(s) if s.as_ref() == "host" => Some(Peers::Host),
            DeValue::String(s) if s.as_ref() == "world" => Some(Peers::World),
            DeValue::String(s) if looks_like_net(s) => {
                Some(Peers::Nets(vec![self.net(key, v, s)?]))
            }
            DeValue::String(_) => Some(Peers::Groups(vec![self.group_ref(key, v, groups)?])),
            DeValue::Array(items) if items.is_empty() => {
                self.err(
                    v.span(),
                    format!(
                        "{key} = [] names no group, so this entry would allow nothing; use \"*\" for any managed container"
                    ),
                );
                None
            }
            DeValue::Array(items) => self.peer_list(key, items, groups),
            _ => {
                self.type_error(
                    key,
                    v,
                    "a group name, a list of group names, \"*\", \"host\", \"world\", or a list of addresses/CIDRs",
                );
                None
            }
        }
    }

    fn peer_list(
        &mut self,
        key: &str,
        items: &DeArray<'_>,
        groups: &BTreeMap<String, Group>,
    ) -> Option<Peers> {
        let mut names: Vec<String> = Vec::new();
        let mut nets: Vec<Net> = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s @ ("host" | "world")) => {
                    ok = false;
                    self.err(
                        item.span(),
                        format!("{s:?} is a peer of its own and cannot be listed: write {key} = {s:?} in an entry of its own"),
                    );
                }
                Some(s) if looks_like_net(s) => match self.net(key, item, s) {
                    Some(n) if !nets.contains(&n) => nets.push(n),
                    Some(_) => {}
                    None => ok = false,
                },
                Some("*") => {
                    ok = false;
                    self.err(
                        item.span(),
                        format!(
                            "\"*\" already means every managed container and cannot be listed with groups: write {key} = \"*\""
                        ),
                    );
                }
                Some(_) => match self.group_ref(key, item, groups) {
                    // Repeats are harmless; dropping them keeps generated sets minimal.
                    Some(n) if !names.contains(&n) => names.push(n),
                    Some(_) => {}
                    None => ok = false,
                },
                None => {
                    ok = false;
                    self.type_error(key, item, "a list of group names (strings)");
                }
            }
        }
        if ok && !names.is_empty() && !nets.is_empty() {
            self.err(
                items
                    .iter()
                    .next()
                    .map(|i| i.span())
                    .unwrap_or_default(),
                format!(
                    "{key} mixes groups and addresses: a line names either trust groups or addresses/CIDRs; split it into two [[allow]] entries"
                ),
            );
            return None;
        }
        if !ok {
            return None;
        }
        Some(if nets.is_empty() {
            Peers::Groups(names)
        } else {
            Peers::Nets(nets)
        })
    }

    fn net(&mut self, key: &str, v: &Value<'_>, s: &str) -> Option<Net> {
        match Net::parse(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.err(v.span(), format!("bad address in {key:?}: {e}"));
                None
            }
        }
    }

    /// Where edge peers may stand (docs/policy.md, "Edges"): one side of a line is always
    /// managed containers, and host -> containers is not filtered.
    fn placement(
        &mut self,
        from: Option<&Peers>,
        fv: &Value<'_>,
        to: Option<&Peers>,
        tv: &Value<'_>,
    ) {
        let (Some(from), Some(to)) = (from, to) else {
            return;
        };
        if matches!(from, Peers::Host) {
            self.err(
                fv.span(),
                "from = \"host\" is not a flow netguard filters: connections from this host to containers stay untouched",
            );
            return;
        }
        if !from.is_containers() && !matches!(to, Peers::Groups(_)) {
            self.err(
                tv.span(),
                format!(
                    "a line from {} must go to trust groups (the containers it may reach), not {}",
                    peer_text(from),
                    peer_text(to)
                ),
            );
            return;
        }
        if !to.is_containers() && !from.is_containers() {
            self.err(
                fv.span(),
                format!(
                    "a line to {} must come from trust groups or \"*\"",
                    peer_text(to)
                ),
            );
        }
    }

    /// Resolves a string naming a group; `v` must hold a string.
    fn group_ref(
        &mut self,
        key: &str,
        v: &Value<'_>,
        groups: &BTreeMap<String, Group>,
    ) -> Option<String> {
        let name = v.get_ref().as_str()?;
        if name.is_empty() {
            self.err(
                v.span(),
                format!("empty group name in {key:?}: name a group, or use \"*\" for any managed container"),
            );
            return None;
        }
        if groups.contains_key(name) {
            return Some(name.to_string());
        }
        let hint = match closest(name, groups.keys().map(String::as_str)) {
            Some(c) => format!(" (did you mean {c:?}?)"),
            None if groups.is_empty() => "; no group is defined (add [groups.NAME])".to_string(),
            None => format!(
                "; defined groups: {}",
                groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        self.err(v.span(), format!("unknown group {name:?} in {key:?}{hint}"));
        None
    }

    fn separates(&mut self, v: &Value<'_>, groups: &BTreeMap<String, Group>) -> Vec<Separate> {
        let Some(items) = v.get_ref().as_array() else {
            self.err(
                v.span(),
                format!(
                    "\"separate\" must be a list of entries, found {}: write [[separate]] (two brackets) before each entry",
                    describe(v.get_ref())
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::Table(t) => self.separate(t, item.span(), groups),
                _ => {
                    self.type_error("separate", item, "a list of tables ([[separate]] entries)");
                    None
                }
            })
            .collect()
    }

    fn separate(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        groups: &BTreeMap<String, Group>,
    ) -> Option<Separate> {
        let errors_before = self.errors.len();
        self.unknown_keys(table, SEPARATE_KEYS, "in [[separate]]");
        let mut names: Vec<String> = Vec::new();
        match table.get("groups") {
            None => self.err(
                span.clone(),
                "[[separate]] needs \"groups\": the trust groups whose members must not share this host, such as groups = [\"public\", \"payments\"]",
            ),
            Some(v) => match v.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref().as_str() {
                            Some("*") => self.err(
                                item.span(),
                                "\"*\" cannot be separated: name the trust groups that must not share a host",
                            ),
                            Some(_) => {
                                if let Some(n) = self.group_ref("groups", item, groups)
                                    && !names.contains(&n)
                                {
                                    names.push(n);
                                }
                            }
                            None => self.type_error("groups", item, "a list of group names (strings)"),
                        }
                    }
                    if self.errors.len() == errors_before && names.len() < 2 {
                        self.err(
                            v.span(),
                            format!(
                                "[[separate]] needs at least two different groups, found {}: members of one group may always share a host",
                                names.len()
                            ),
                        );
                    }
                }
                _ => self.type_error("groups", v, "a list of at least two group names"),
            },
        }
        let comment = match table.get("comment") {
            Some(v) => match v.get_ref().as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    self.type_error("comment", v, "a string");
                    None
                }
            },
            None => None,
        };
        (self.errors.len() == errors_before).then(|| Separate {
            groups: names,
            comment,
            loc: self.loc(span.start),
        })
    }

    /// The listed specs, or `None` after reporting why there are none.
    fn ports(&mut self, v: &Value<'_>) -> Option<Vec<PortSpec>> {
        let Some(items) = v.get_ref().as_array() else {
            self.type_error("ports", v, "a list of strings such as [\"8080/tcp\"]");
            return None;
        };
        if items.is_empty() {
            self.err(
                v.span(),
                "ports = [] allows nothing; omit ports to allow all traffic",
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            let Some(s) = item.get_ref().as_str() else {
                ok = false;
                self.type_error(
                    "ports",
                    item,
                    "a list of strings such as \"8080/tcp\", \"9000-9100/udp\" or \"icmp\"",
                );
                continue;
            };
            match PortSpec::parse(s) {
                Ok(p) if !specs.contains(&p) => specs.push(p),
                Ok(_) => {}
                Err(e) => {
                    ok = false;
                    self.err(item.span(), e.to_string());
                }
            }
        }
        ok.then_some(specs)
    }
}

/// Group names become parts of nftables set names, whose length and alphabet are limited.
fn check_group_name(name: &str) -> Result<(), String> {
    if name == "*" {
        return Err(
            "\"*\" is reserved (it means any managed container) and cannot name a group".into(),
        );
    }
    if let Some(meaning) = edge_peer(name) {
        return Err(format!(
            "{name:?} is reserved (it means {meaning}) and cannot name a group"
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 32 {
        Ok(())
    } else {
        Err(format!(
            "invalid group name {name:?}: a group name starts with a letter, has only letters, digits, '_' and '-', and at most 32 characters (it becomes part of an nftables set name)"
        ))
    }
}

/// The reserved peer names and what they mean.
fn edge_peer(name: &str) -> Option<&'static str> {
    match name {
        "host" => Some("this host's own addresses"),
        "world" => Some("anything that is not a managed container"),
        _ => looks_like_net(name).then_some("an address"),
    }
}

/// A string a group name can never be (groups have no '.', ':' or '/'), so it is read as
/// an address and any mistake in it reported as one.
fn looks_like_net(s: &str) -> bool {
    s.contains(['.', ':', '/'])
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_hexdigit() || c == ':')
}

fn peer_text(p: &Peers) -> String {
    match p {
        Peers::Any => "\"*\"".into(),
        Peers::Groups(_) => "trust groups".into(),
        Peers::Host => "\"host\"".into(),
        Peers::World => "\"world\"".into(),
        Peers::Nets(_) => "addresses".into(),
    }
}

fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(f) => format!("the float {f}"),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_of(keys: &[&str]) -> String {
    match keys {
        [only] => format!("only {only:?}"),
        _ => format!("one of {}", list(keys)),
    }
}

/// The candidate within a small edit distance of `word`, for "did you mean" hints.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    // Short words get a hint only when they differ by case alone: at one edit, almost
    // any short word is "close" to some other.
    let limit = match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    candidates
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance where swapping two adjacent characters also counts as one edit
/// (optimal string alignment), since transposed letters are the most common typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> PolicyError {
    let span = e.span();
    let offset = span.as_ref().map(|s| s.start).unwrap_or(0);
    let mut message = e.message().trim().to_string();
    if message == "duplicate key"
        && let Some(span) = span
    {
        message = duplicate_message(text, span);
    }
    PolicyError {
        loc: Loc::at(path, text, offset),
        message,
    }
}

/// TOML reports a redefined `[groups.NAME]` as a bare "duplicate key"; say what it means.
fn duplicate_message(text: &str, span: Range<usize>) -> String {
    let key = text
        .get(span.clone())
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .to_string();
    let line_start = text
        .get(..span.start)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let before_key = text.get(line_start..span.start).unwrap_or("").trim_start();
    let is_group = if let Some(header) = before_key.strip_prefix('[') {
        // `[groups.NAME]`: the duplicate key is the second segment of a header.
        header.trim_start_matches('[').replace(' ', "") == "groups."
    } else {
        // `NAME = {...}` directly below a `[groups]` header.
        before_key.is_empty() && enclosing_header(text, line_start).as_deref() == Some("groups")
    };
    if !is_group {
        if key == "allow" && before_key.trim_start_matches('[').trim().is_empty() {
            return "duplicate key \"allow\": write [[allow]] (two brackets) before every allow entry".into();
        }
        return format!("duplicate key {key:?}: a key is set once per table; remove one of them");
    }
    match first_group_line(text, &key, line_start) {
        Some(line) => format!(
            "duplicate group {key:?}: first defined at line {line}; a group is defined once (list several selectors in its \"match\" instead)"
        ),
        None => format!("duplicate group {key:?}: a group is defined once"),
    }
}

/// The 1-based line where group `name` is first defined, looking only before `end`. The
/// parse tree cannot tell: after the error it holds the later definition's spans.
fn first_group_line(text: &str, name: &str, end: usize) -> Option<usize> {
    let mut header = String::new();
    for (i, line) in text.get(..end)?.lines().enumerate() {
        let line = line.trim();
        if let Some(inner) = line.strip_prefix('[') {
            header = inner
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .replace([' ', '"', '\''], "");
            let mut parts = header.split('.');
            if parts.next() == Some("groups") && parts.next() == Some(name) {
                return Some(i + 1);
            }
        } else if header == "groups" {
            let key = line
                .split(['=', '.'])
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(|c| c == '"' || c == '\'');
            if key == name {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The `[header]` (without brackets and spaces) governing the line starting at `line_start`.
fn enclosing_header(text: &str, line_start: usize) -> Option<String> {
    text.get(..line_start)?.lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?;
        let end = inner.find(']')?;
        Some(inner.get(..end)?.trim_start_matches('[').replace(' ', ""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Proto;

    /// Errors as "LINE:COL: message", the file name being always the same here.
    fn errors(text: &str) -> Vec<String> {
        match parse_policy(Path::new("p.toml"), text) {
            Ok(_) => Vec::new(),
            Err(PolicyErrors(es)) => es
                .into_iter()
                .map(|e| {
                    assert_eq!(e.loc.file, Path::new("p.toml"));
                    format!("{}:{}: {}", e.loc.line, e.loc.col, e.message)
                })
                .collect(),
        }
    }

    #[track_caller]
    fn one_error(text: &str) -> String {
        let es = errors(text);
        assert_eq!(es.len(), 1, "expected exactly one error, got {es:#?}");
        es.into_iter().next().unwrap_or_default()
    }

    #[track_caller]
    fn ok(text: &str) -> Policy {
        match parse_policy(Path::new("p.toml"), text) {
            Ok(p) => p,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    const WEB: &str = "[groups.web]\nmatch = { name = \"web-*\" }\n";

    #[test]
    fn parses_a_full_policy() {
        let text = r#"version = 1

[settings]
networks = ["app-*", "front"]
anti_spoofing = false
log_denied = true

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = [ { name = "api-*" },
          { label = { "com.docker.compose.service" = "api", tier = "*" }, network = "back" } ]

[groups.db]
match = { image = "postgres*" }

[[allow]]
from = "web"
to = ["api", "api", "db"]
ports = ["8080/tcp", "9000-9100/udp", "icmp"]
comment = "frontend calls the API"

[[allow]]
within = "db"

[[allow]]
from = "*"
to = "web"
"#;
        let p = ok(text);
        assert_eq!(p.version, 1);
        assert!(!p.settings.anti_spoofing);
        assert!(p.settings.log_denied);
        assert!(p.settings.manages_network("app-1"));
        assert!(!p.settings.manages_network("other"));
        assert_eq!(p.groups.keys().collect::<Vec<_>>(), ["api", "db", "web"]);

        let api = &p.groups["api"];
        assert_eq!((api.loc.line, api.loc.col), (11, 1));
        assert_eq!(api.selectors.len(), 2);
        assert_eq!(
            (api.selectors[0].loc.line, api.selectors[0].loc.col),
            (12, 11)
        );
        assert_eq!(
            api.selectors[0].name.as_ref().map(Glob::as_str),
            Some("api-*")
        );
        let s1 = &api.selectors[1];
        assert_eq!((s1.loc.line, s1.loc.col), (13, 11));
        assert_eq!(s1.labels["com.docker.compose.service"].as_str(), "api");
        assert!(s1.labels["tier"].is_any());
        assert_eq!(s1.network.as_ref().map(Glob::as_str), Some("back"));
        assert_eq!(s1.name, None);

        assert_eq!(p.allows.len(), 3);
        let a = &p.allows[0];
        assert_eq!((a.loc.line, a.loc.col), (18, 1));
        assert_eq!(a.from, Peers::Groups(vec!["web".into()]));
        // repeated names collapse
        assert_eq!(a.to, Peers::Groups(vec!["api".into(), "db".into()]));
        assert!(!a.within);
        assert_eq!(a.comment.as_deref(), Some("frontend calls the API"));
        let ports = a.ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 3);
        assert_eq!(
            (ports[1].proto, ports[1].low, ports[1].high),
            (Proto::Udp, 9000, 9100)
        );
        assert_eq!(ports[2].proto, Proto::Icmp);

        let w = &p.allows[1];
        assert!(w.within);
        assert_eq!((w.loc.line, w.loc.col), (24, 1));
        assert_eq!(w.from, Peers::Groups(vec!["db".into()]));
        assert_eq!(w.to, w.from);
        assert_eq!(w.ports, None);

        assert_eq!(p.allows[2].from, Peers::Any);
        assert_eq!(p.allows[2].to, Peers::Groups(vec!["web".into()]));
    }

    #[test]
    fn defaults_for_an_empty_file() {
        let p = ok("");
        assert_eq!(p.version, 1);
        assert_eq!(p.settings, Settings::default());
        assert!(p.groups.is_empty() && p.allows.is_empty());
    }

    #[test]
    fn inline_group_is_located_at_its_name() {
        let p = ok("[groups]\n  web = { match = { name = \"w\" } }\n");
        let g = &p.groups["web"];
        assert_eq!((g.loc.line, g.loc.col), (2, 3));
        assert_eq!((g.selectors[0].loc.line, g.selectors[0].loc.col), (2, 19));
    }

    #[test]
    fn example_policy_parses() {
        let text = include_str!("../../policy.example.toml");
        let p = ok(text);
        // Its commented-out [[separate]] is valid once uncommented.
        let uncommented = text
            .replace("# [[separate]]", "[[separate]]")
            .replace("# groups = [\"web\", \"db\"]", "groups = [\"web\", \"db\"]");
        assert_eq!(ok(&uncommented).separates.len(), 1);
        assert!(p.groups.contains_key("monitoring"));
        assert!(p.allows.iter().any(|a| a.within));
        assert!(p.allows.iter().any(|a| a.to == Peers::Any));
    }

    #[test]
    fn admission_hold_and_queue() {
        let p = parse_policy(Path::new("p.toml"), "").expect("empty policy");
        assert!(p.settings.admission_hold);
        assert_eq!(
            p.settings.admission_queue,
            crate::policy::DEFAULT_ADMISSION_QUEUE
        );
        let p = parse_policy(
            Path::new("p.toml"),
            "[settings]\nadmission_hold = false\nadmission_queue = 0x10\n",
        )
        .expect("policy");
        assert!(!p.settings.admission_hold);
        assert_eq!(p.settings.admission_queue, 16);
        assert_eq!(
            one_error("[settings]\nadmission_queue = 70000\n"),
            "2:19: admission_queue = 70000 is not a queue number: an NFQUEUE number is 0 to 65535"
        );
        assert_eq!(
            one_error("[settings]\nadmission_queue = -1\n"),
            "2:19: admission_queue = -1 is not a queue number: an NFQUEUE number is 0 to 65535"
        );
        assert_eq!(
            one_error("[settings]\nadmission_queue = \"5\"\n"),
            "2:19: \"admission_queue\" must be an NFQUEUE number (an integer, 0 to 65535), found the string \"5\""
        );
        assert_eq!(
            one_error("[settings]\nadmission_hold = 1\n"),
            "2:18: \"admission_hold\" must be a boolean (true or false), found the integer 1"
        );
    }

    #[test]
    fn unknown_keys_everywhere() {
        assert_eq!(
            one_error("versoin = 1\n"),
            "1:1: unknown key \"versoin\" at the top level (did you mean \"version\"?); \
             expected one of \"version\", \"settings\", \"groups\", \"allow\", \"separate\""
        );
        assert_eq!(
            one_error("[settings]\nanti_spofing = true\n"),
            "2:1: unknown key \"anti_spofing\" in [settings] (did you mean \"anti_spoofing\"?); \
             expected one of \"networks\", \"anti_spoofing\", \"log_denied\", \"host\", \"egress\", \"ingress\", \
             \"admission_hold\", \"admission_queue\""
        );
        assert_eq!(
            one_error(&format!("{WEB}matches = 1\n")),
            "3:1: unknown key \"matches\" in group \"web\" (did you mean \"match\"?); \
             expected one of \"match\", \"mac_binding\""
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = { names = \"w\" }\n"),
            "2:11: unknown key \"names\" in selector (did you mean \"name\"?); \
             expected one of \"name\", \"image\", \"network\", \"label\""
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"*\"\nport = [\"80/tcp\"]\n"),
            "4:1: unknown key \"port\" in [[allow]] (did you mean \"ports\"?); \
             expected one of \"from\", \"to\", \"within\", \"ports\", \"comment\""
        );
        // No hint when nothing is close.
        assert_eq!(
            one_error("color = \"red\"\n"),
            "1:1: unknown key \"color\" at the top level; \
             expected one of \"version\", \"settings\", \"groups\", \"allow\", \"separate\""
        );
    }

    #[test]
    fn unknown_groups_in_references() {
        assert_eq!(
            one_error(&format!("{WEB}[[allow]]\nfrom = \"wbe\"\nto = \"*\"\n")),
            "4:8: unknown group \"wbe\" in \"from\" (did you mean \"web\"?)"
        );
        assert_eq!(
            one_error(&format!(
                "{WEB}[[allow]]\nfrom = \"*\"\nto = [\"web\", \"db\"]\n"
            )),
            "5:14: unknown group \"db\" in \"to\"; defined groups: web"
        );
        assert_eq!(
            one_error("[[allow]]\nwithin = \"db\"\n"),
            "2:10: unknown group \"db\" in \"within\"; no group is defined (add [groups.NAME])"
        );
    }

    #[test]
    fn duplicate_groups() {
        assert_eq!(
            one_error(
                "[groups.web]\nmatch = { name = \"a\" }\n\n[groups.web]\nmatch = { name = \"b\" }\n"
            ),
            "4:9: duplicate group \"web\": first defined at line 1; a group is defined once \
             (list several selectors in its \"match\" instead)"
        );
        assert_eq!(
            one_error(
                "[groups]\nweb = { match = { name = \"a\" } }\nweb = { match = { name = \"b\" } }\n"
            ),
            "3:1: duplicate group \"web\": first defined at line 2; a group is defined once \
             (list several selectors in its \"match\" instead)"
        );
        // Other duplicate keys stay plain, but named.
        assert_eq!(
            one_error("[settings]\nlog_denied = true\nlog_denied = false\n"),
            "3:1: duplicate key \"log_denied\": a key is set once per table; remove one of them"
        );
    }

    #[test]
    fn from_and_to_go_together() {
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nports = [\"80/tcp\"]\n"),
            "2:1: \"from\" without \"to\": say where the traffic may go \
             (a group, a list of groups, or \"*\")"
        );
        assert_eq!(
            one_error("[[allow]]\nto = \"*\"\n"),
            "2:1: \"to\" without \"from\": say where the traffic may come from \
             (a group, a list of groups, or \"*\")"
        );
        assert_eq!(
            one_error("[[allow]]\ncomment = \"nothing\"\n"),
            "1:1: allow entry needs \"from\" and \"to\", or \"within\""
        );
        assert_eq!(
            one_error("allow = [ {} ]\n"),
            "1:11: allow entry needs \"from\" and \"to\", or \"within\""
        );
    }

    #[test]
    fn peers_must_name_something() {
        assert_eq!(
            one_error("[[allow]]\nfrom = []\nto = \"*\"\n"),
            "2:8: from = [] names no group, so this entry would allow nothing; \
             use \"*\" for any managed container"
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"\"\n"),
            "3:6: empty group name in \"to\": name a group, or use \"*\" for any managed container"
        );
        assert_eq!(
            one_error(&format!(
                "{WEB}[[allow]]\nfrom = [\"web\", \"\"]\nto = \"*\"\n"
            )),
            "4:16: empty group name in \"from\": name a group, or use \"*\" for any managed container"
        );
        assert_eq!(
            one_error(&format!(
                "{WEB}[[allow]]\nfrom = [\"web\", \"*\"]\nto = \"*\"\n"
            )),
            "4:16: \"*\" already means every managed container and cannot be listed with groups: \
             write from = \"*\""
        );
    }

    #[test]
    fn within_excludes_from_and_to() {
        assert_eq!(
            one_error(&format!(
                "{WEB}[[allow]]\nfrom = \"web\"\nwithin = \"web\"\n"
            )),
            "5:1: \"within\" cannot be combined with \"from\"/\"to\": use within = \"GROUP\" \
             for a trust group, or from/to for a one-way flow"
        );
        // `to` alone with `within` is refused the same way, located at `within`.
        assert_eq!(
            one_error(&format!("{WEB}[[allow]]\nwithin = \"web\"\nto = \"web\"\n")),
            "4:1: \"within\" cannot be combined with \"from\"/\"to\": use within = \"GROUP\" \
             for a trust group, or from/to for a one-way flow"
        );
        assert_eq!(
            one_error("[[allow]]\nwithin = \"*\"\n"),
            "2:10: within = \"*\" would switch isolation off: name one trust group, \
             or write from = \"*\" and to = \"*\" if that is really meant"
        );
        assert_eq!(
            one_error(&format!("{WEB}[[allow]]\nwithin = [\"web\"]\n")),
            "4:10: \"within\" must be one group name (a string), found a list"
        );
    }

    #[test]
    fn bad_ports_are_located_at_the_string() {
        let text = "[[allow]]\nfrom = \"*\"\nto = \"*\"\nports = [\"80/tcp\", \"0/tcp\",\n  \"70000/tcp\", \"20-10/tcp\", \"80/foo\", \"80\", 443]\n";
        assert_eq!(
            errors(text),
            [
                "4:20: bad port \"0\" in \"0/tcp\": expected a number from 1 to 65535",
                "5:3: bad port \"70000\" in \"70000/tcp\": expected a number from 1 to 65535",
                "5:16: bad port range in \"20-10/tcp\": 20 is greater than 10; expected LOW-HIGH with LOW <= HIGH (e.g. \"10-20\")",
                "5:29: unknown protocol \"foo\" in \"80/foo\": expected tcp, udp or sctp (or the spec \"icmp\")",
                "5:39: bad port spec \"80\": expected \"PORT/PROTO\", \"LOW-HIGH/PROTO\" or \"icmp\" \
                 (e.g. \"8080/tcp\", \"9000-9100/udp\")",
                "5:45: \"ports\" must be a list of strings such as \"8080/tcp\", \"9000-9100/udp\" \
                 or \"icmp\", found the integer 443",
            ]
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"*\"\nports = []\n"),
            "4:9: ports = [] allows nothing; omit ports to allow all traffic"
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"*\"\nports = \"80/tcp\"\n"),
            "4:9: \"ports\" must be a list of strings such as [\"8080/tcp\"], found the string \"80/tcp\""
        );
    }

    #[test]
    fn bad_globs_are_located_at_the_string() {
        assert_eq!(
            errors(
                "[settings]\nnetworks = [\"ok\", \"\"]\n[groups.web]\n\
                 match = { name = \"a[1]\", label = { role = \"{x}\" } }\n"
            ),
            [
                "2:19: bad glob \"\" in \"networks\": empty pattern (use \"*\" to match anything)",
                "4:18: bad glob \"a[1]\" in \"name\": unsupported character '[' in pattern: \
                 only `*` and `?` are wildcards",
                "4:43: bad glob \"{x}\" in \"label role\": unsupported character '{' in pattern: \
                 only `*` and `?` are wildcards",
            ]
        );
    }

    #[test]
    fn empty_selectors() {
        assert_eq!(
            one_error("[groups.web]\nmatch = {}\n"),
            "2:9: empty selector: give at least one of \
             \"name\", \"image\", \"network\", \"label\" \
             (without any, it would match every container)"
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = [{ name = \"a\" }, {}]\n"),
            "2:26: empty selector: give at least one of \
             \"name\", \"image\", \"network\", \"label\" \
             (without any, it would match every container)"
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = []\n"),
            "2:9: match = [] matches no container: give a selector or a list of selectors"
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = { label = {} }\n"),
            "2:19: label = {} requires no label: give at least one KEY = \"GLOB\" \
             (\"*\" means the label is present)"
        );
        assert_eq!(
            one_error("[groups.web]\n"),
            "1:1: group \"web\" has no \"match\": give a selector such as \
             match = { label = { role = \"web\" } }"
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            one_error("[settings]\nanti_spoofing = \"yes\"\n"),
            "2:17: \"anti_spoofing\" must be a boolean (true or false), found the string \"yes\""
        );
        assert_eq!(
            one_error("[groups.lb]\nmatch = { name = \"lb\" }\nmac_binding = \"no\"\n"),
            "3:15: \"mac_binding\" must be a boolean (true or false), found the string \"no\""
        );
        assert_eq!(
            one_error("[settings]\nlog_denied = 1\n"),
            "2:14: \"log_denied\" must be a boolean (true or false), found the integer 1"
        );
        assert_eq!(
            one_error("[settings]\nnetworks = \"app-*\"\n"),
            "2:12: \"networks\" must be a list of network name globs such as [\"app-*\"], \
             found the string \"app-*\""
        );
        assert_eq!(
            one_error("settings = true\n"),
            "1:12: \"settings\" must be a table ([settings]), found the boolean true"
        );
        assert_eq!(
            one_error("[groups]\nweb = \"web-*\"\n"),
            "2:7: group \"web\" must be a table with a \"match\" key, found the string \"web-*\""
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = \"web-*\"\n"),
            "2:9: \"match\" must be a selector table such as { image = \"postgres*\" }, \
             or a list of them, found the string \"web-*\""
        );
        assert_eq!(
            one_error("[groups.web]\nmatch = { label = { role = 1 } }\n"),
            "2:28: \"label role\" must be a string (a glob with `*` and `?`), found the integer 1"
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = 1\nto = \"*\"\n"),
            "2:8: \"from\" must be a group name, a list of group names, \"*\", \"host\", \"world\", or a list of addresses/CIDRs, found the integer 1"
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"*\"\ncomment = 5\n"),
            "4:11: \"comment\" must be a string, found the integer 5"
        );
        assert_eq!(
            one_error("[allow]\nfrom = \"*\"\nto = \"*\"\n"),
            "1:1: \"allow\" must be a list of entries, found a table: \
             write [[allow]] (two brackets) before each entry"
        );
        assert_eq!(
            one_error("[[allow]]\nfrom = \"*\"\nto = \"*\"\n[allow]\n"),
            "4:2: duplicate key \"allow\": write [[allow]] (two brackets) before every allow entry"
        );
    }

    #[test]
    fn only_version_1() {
        assert_eq!(
            one_error("version = 2\n"),
            "1:11: unsupported policy version 2: this netguard understands version 1 only"
        );
        assert_eq!(
            one_error("version = 99999999999999999999\n"),
            "1:11: unsupported policy version 99999999999999999999: \
             this netguard understands version 1 only"
        );
        assert_eq!(
            one_error("version = \"1\"\n"),
            "1:11: \"version\" must be the integer 1, found the string \"1\""
        );
        ok("version = 0x1\n");
    }

    #[test]
    fn group_names_fit_nftables() {
        let rule = "a group name starts with a letter, has only letters, digits, '_' and '-', \
                    and at most 32 characters (it becomes part of an nftables set name)";
        assert_eq!(
            one_error("[groups.1web]\nmatch = { name = \"w\" }\n"),
            format!("1:9: invalid group name \"1web\": {rule}")
        );
        assert_eq!(
            one_error("[groups.\"web.front\"]\nmatch = { name = \"w\" }\n"),
            format!("1:9: invalid group name \"web.front\": {rule}")
        );
        let long = format!("a{}", "b".repeat(32));
        assert_eq!(
            one_error(&format!("[groups.{long}]\nmatch = {{ name = \"w\" }}\n")),
            format!("1:9: invalid group name \"{long}\": {rule}")
        );
        ok(&format!(
            "[groups.a{}]\nmatch = {{ name = \"w\" }}\n",
            "b".repeat(31)
        ));
        ok("[groups.Web_front-2]\nmatch = { name = \"w\" }\n");
        assert_eq!(
            one_error("[groups.\"*\"]\nmatch = { name = \"w\" }\n"),
            "1:9: \"*\" is reserved (it means any managed container) and cannot name a group"
        );
    }

    #[test]
    fn syntax_error_is_the_only_error() {
        assert_eq!(
            one_error("versoin = 1\n[settings\nnetworks = []\n"),
            "2:10: unclosed table, expected `]`"
        );
    }

    #[test]
    fn all_semantic_errors_are_reported_in_file_order() {
        let text = "version = 3\n[settings]\nanti_spoofing = \"no\"\n\
                    [groups.web]\nmatch = {}\n[[allow]]\nfrom = \"nope\"\nto = \"*\"\nports = [\"0/tcp\"]\n";
        let es = errors(text);
        let at: Vec<&str> = es
            .iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(at, ["1:11", "3:17", "5:9", "7:8", "9:10"]);
    }

    #[test]
    fn unused_groups_are_only_warnings() {
        let p = ok(&format!(
            "{WEB}[groups.db]\nmatch = {{ image = \"postgres*\" }}\n[[allow]]\nfrom = \"web\"\nto = \"*\"\n"
        ));
        assert_eq!(
            warnings(&p),
            [
                "p.toml:3:1: group \"db\" is not used by any [[allow]] entry: \
              its members only get what \"*\" gives them"
            ]
        );
    }

    #[test]
    fn separate_lines() {
        let two = "[groups.public]\nmatch = { name = \"p*\" }\n[groups.payments]\nmatch = { name = \"c*\" }\n";
        let p = ok(&format!(
            "{two}[[separate]]\ngroups = [\"public\", \"payments\", \"public\"]\ncomment = \"apart\"\n"
        ));
        assert_eq!(p.separates.len(), 1);
        let s = &p.separates[0];
        assert_eq!(s.groups, ["public", "payments"], "repeats collapse");
        assert_eq!(s.comment.as_deref(), Some("apart"));
        assert_eq!((s.loc.line, s.loc.col), (5, 1));
        assert!(ok(two).separates.is_empty());

        assert_eq!(
            one_error(&format!(
                "{two}[[separate]]\ngroups = [\"public\", \"paymnets\"]\n"
            )),
            "6:21: unknown group \"paymnets\" in \"groups\" (did you mean \"payments\"?)"
        );
        assert_eq!(
            one_error(&format!("{two}[[separate]]\ngroups = [\"public\"]\n")),
            "6:10: [[separate]] needs at least two different groups, found 1: members of one group may always share a host"
        );
        assert_eq!(
            one_error(&format!(
                "{two}[[separate]]\ngroups = [\"public\", \"public\"]\n"
            )),
            "6:10: [[separate]] needs at least two different groups, found 1: members of one group may always share a host"
        );
        assert_eq!(
            one_error(&format!(
                "{two}[[separate]]\ngroups = [\"public\", \"payments\"]\ngrups = 1\n"
            )),
            "7:1: unknown key \"grups\" in [[separate]] (did you mean \"groups\"?); expected one of \"groups\", \"comment\""
        );
        assert_eq!(
            one_error(&format!("{two}[[separate]]\ncomment = \"x\"\n")),
            "5:1: [[separate]] needs \"groups\": the trust groups whose members must not share this host, such as groups = [\"public\", \"payments\"]"
        );
        assert_eq!(
            one_error(&format!("{two}[[separate]]\ngroups = \"public\"\n")),
            "6:10: \"groups\" must be a list of at least two group names, found the string \"public\""
        );
        assert_eq!(
            one_error(&format!(
                "{two}[[separate]]\ngroups = [\"*\", \"public\"]\n"
            )),
            "6:11: \"*\" cannot be separated: name the trust groups that must not share a host"
        );
        assert_eq!(
            one_error(&format!("separate = 1\n{two}")),
            "1:12: \"separate\" must be a list of entries, found the integer 1: write [[separate]] (two brackets) before each entry"
        );
    }

    #[test]
    fn typo_distance() {
        assert_eq!(edit_distance("wbe", "web"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("db", ["dc", "web"].into_iter()), None);
        assert_eq!(closest("DB", ["db"].into_iter()), Some("db"));
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;
    use crate::policy::EdgeDefault;

    fn errors(text: &str) -> Vec<String> {
        match parse_policy(Path::new("p.toml"), text) {
            Ok(_) => Vec::new(),
            Err(PolicyErrors(es)) => es
                .into_iter()
                .map(|e| format!("{}:{}: {}", e.loc.line, e.loc.col, e.message))
                .collect(),
        }
    }

    const GROUPS: &str =
        "[groups.api]\nmatch = { name = \"api-*\" }\n[groups.web]\nmatch = { name = \"web-*\" }\n";

    fn with_groups(rest: &str) -> String {
        format!("{GROUPS}{rest}")
    }

    #[test]
    fn the_issue_contract_parses() {
        let text = with_groups(
            r#"[settings]
host = "deny"
egress = "deny"
ingress = "allow"

[[allow]]
from = "api"
to = ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
ports = ["443/tcp"]

[[allow]]
from = "api"
to = "host"
ports = ["9100/tcp"]

[[allow]]
from = "world"
to = "web"
ports = ["443/tcp"]

[[allow]]
from = ["198.51.100.0/24"]
to = "web"
"#,
        );
        let p = match parse_policy(Path::new("p.toml"), &text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.settings.host, EdgeDefault::Deny);
        assert_eq!(p.settings.egress, EdgeDefault::Deny);
        assert_eq!(p.settings.ingress, EdgeDefault::Allow);
        let nets = |p: &Peers| match p {
            Peers::Nets(n) => n.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            _ => vec![],
        };
        assert_eq!(
            nets(&p.allows[0].to),
            ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
        );
        assert_eq!(p.allows[1].to, Peers::Host);
        assert_eq!(p.allows[2].from, Peers::World);
        assert_eq!(nets(&p.allows[3].from), ["198.51.100.0/24"]);
        assert!(errors(GROUPS).is_empty());
    }

    #[test]
    fn settings_default_to_allow_and_reject_other_values() {
        let p = parse_policy(Path::new("p.toml"), GROUPS).ok();
        assert_eq!(p.map(|p| p.settings.egress), Some(EdgeDefault::Allow));
        assert_eq!(
            errors("[settings]\nhost = \"block\"\negress = true\n"),
            [
                "2:8: \"host\" must be \"allow\" or \"deny\", found the string \"block\"",
                "3:10: \"egress\" must be \"allow\" or \"deny\", found the boolean true",
            ]
        );
    }

    #[test]
    fn reserved_group_names() {
        assert_eq!(
            errors(
                "[groups.host]\nmatch = { name = \"h\" }\n[groups.world]\nmatch = { name = \"w\" }\n"
            ),
            [
                "1:9: \"host\" is reserved (it means this host's own addresses) and cannot name a group",
                "3:9: \"world\" is reserved (it means anything that is not a managed container) and cannot name a group",
            ]
        );
    }

    #[test]
    fn within_takes_groups_only() {
        assert_eq!(
            errors(&with_groups("[[allow]]\nwithin = \"host\"\n")),
            [
                "6:10: within takes one trust group, not \"host\": write from = \"GROUP\" and to = \"host\" for a flow to an edge"
            ]
        );
        assert_eq!(
            errors(&with_groups("[[allow]]\nwithin = \"10.0.0.0/8\"\n")).len(),
            1
        );
    }

    #[test]
    fn edge_peers_need_containers_on_the_other_side() {
        assert_eq!(
            errors(&with_groups("[[allow]]\nfrom = \"world\"\nto = \"host\"\n")),
            [
                "7:6: a line from \"world\" must go to trust groups (the containers it may reach), not \"host\""
            ]
        );
        assert_eq!(
            errors(&with_groups("[[allow]]\nfrom = \"world\"\nto = \"*\"\n")),
            [
                "7:6: a line from \"world\" must go to trust groups (the containers it may reach), not \"*\""
            ]
        );
        assert_eq!(
            errors(&with_groups(
                "[[allow]]\nfrom = \"10.0.0.0/8\"\nto = [\"203.0.113.0/24\"]\n"
            )),
            [
                "7:6: a line from addresses must go to trust groups (the containers it may reach), not addresses"
            ]
        );
        assert_eq!(
            errors(&with_groups("[[allow]]\nfrom = \"host\"\nto = \"web\"\n")),
            [
                "6:8: from = \"host\" is not a flow netguard filters: connections from this host to containers stay untouched"
            ]
        );
        // Containers to an edge, and "*" to one, are fine.
        assert!(errors(&with_groups("[[allow]]\nfrom = \"*\"\nto = \"world\"\n")).is_empty());
        assert!(
            errors(&with_groups(
                "[[allow]]\nfrom = [\"api\", \"web\"]\nto = \"host\"\n"
            ))
            .is_empty()
        );
    }

    #[test]
    fn bad_addresses_and_lists() {
        assert_eq!(
            errors(&with_groups(
                "[[allow]]\nfrom = \"api\"\nto = [\"203.0.113.5/24\", \"10.0.0.0/33\", \"1.2.3\"]\n"
            )),
            [
                "7:7: bad address in \"to\": \"203.0.113.5/24\" has bits set beyond its prefix: write 203.0.113.0/24",
                "7:25: bad address in \"to\": prefix /33 is too long for 10.0.0.0 (at most /32)",
                "7:40: bad address in \"to\": \"1.2.3\" is not an address or CIDR (such as \"203.0.113.0/24\" or \"2001:db8::/32\")",
            ]
        );
        assert_eq!(
            errors(&with_groups(
                "[[allow]]\nfrom = \"api\"\nto = [\"web\", \"203.0.113.0/24\"]\n"
            )),
            [
                "7:7: to mixes groups and addresses: a line names either trust groups or addresses/CIDRs; split it into two [[allow]] entries"
            ]
        );
        assert_eq!(
            errors(&with_groups(
                "[[allow]]\nfrom = \"api\"\nto = [\"host\", \"world\"]\n"
            )),
            [
                "7:7: \"host\" is a peer of its own and cannot be listed: write to = \"host\" in an entry of its own",
                "7:15: \"world\" is a peer of its own and cannot be listed: write to = \"world\" in an entry of its own",
            ]
        );
    }

    #[test]
    fn unknown_settings_key_names_the_new_ones() {
        let es = errors("[settings]\nhosts = \"deny\"\n");
        assert_eq!(es.len(), 1);
        assert!(
            es[0].starts_with("2:1: unknown key \"hosts\" in [settings] (did you mean \"host\"?)"),
            "{es:?}"
        );
    }
}
