//! The nftables backend: read netguard's live tables, diff them against the plan, apply
//! the difference as one atomic transaction. Only `inet netguard` and `bridge netguard`
//! are ever read or written.

pub mod exec;
mod fault;
pub mod live;
pub mod netlink;
pub mod render;

use crate::plan::ruleset::*;
use exec::{ExecError, NftExec};
use live::LiveTable;
use nftables::schema::{FlushObject, NfCmd, NfListObject, NfObject, Nftables};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub const FAMILIES: [Family; 2] = [Family::Inet, Family::Bridge];

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Parse(#[from] live::ParseError),
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error("cannot encode nft batch: {0}")]
    Encode(String),
    #[error(
        "cannot add the rule that holds packets of containers not admitted yet ({0}); \
         the kernel needs nft_compat and xt_NFQUEUE, or set [settings] admission_hold = false"
    )]
    Queue(String),
}

/// The live state of every table netguard owns (absent tables are `None`).
pub type LiveState = BTreeMap<Family, Option<LiveTable>>;

/// Reads and writes netguard's tables through an [`NftExec`].
pub struct Backend {
    exec: Box<dyn NftExec>,
    netlink_reads: bool,
}

impl Backend {
    /// Reads and writes through `exec` (reads as `list table` JSON).
    pub fn new(exec: Box<dyn NftExec>) -> Backend {
        Backend {
            exec,
            netlink_reads: false,
        }
    }

    /// libnftables (or the `nft` binary) for structural writes; reconcile reads and
    /// element-only transactions straight over nfnetlink, ≈ 10× faster than nft at 1,000
    /// containers (see [`netlink`]). `NETGUARD_READ=nft` goes through nft only.
    pub fn system() -> Backend {
        let netlink_reads = std::env::var("NETGUARD_READ").as_deref() != Ok("nft");
        Backend::new(exec::default_exec()).netlink_reads(netlink_reads)
    }

    /// Whether reconcile reads, structure reads and element-only transactions go over
    /// nfnetlink (`true`) or through nft.
    pub fn netlink_reads(mut self, on: bool) -> Backend {
        self.netlink_reads = on;
        self
    }

    pub fn exec_name(&self) -> &'static str {
        self.exec.describe()
    }

    /// Table `family netguard` as nft lists it (rules with their statements).
    pub fn read_table(&self, family: Family) -> Result<Option<LiveTable>, NftError> {
        match self
            .exec
            .run(&format!("list table {} {}", family.as_str(), TABLE_NAME))
        {
            Ok(json) => Ok(Some(live::parse_table(&json)?)),
            // nft reports a missing table as ENOENT; anything else is a real failure.
            Err(ExecError::Nft(msg)) if msg.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// netguard's tables without set contents: the structure only.
    pub fn read_structure(&self) -> Result<LiveState, NftError> {
        if self.netlink_reads {
            return FAMILIES
                .iter()
                .map(|f| Ok((*f, netlink::read_structure(*f)?)))
                .collect();
        }
        FAMILIES
            .iter()
            .map(|f| {
                let cmd = format!("list table {} {}", f.as_str(), TABLE_NAME);
                match self.exec.run_terse(&cmd) {
                    Ok(json) => Ok((*f, Some(live::parse_table(&json)?))),
                    Err(ExecError::Nft(msg)) if msg.contains("No such file or directory") => {
                        Ok((*f, None))
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .collect()
    }

    /// Whether the live tables have the desired structure (tables, sets, chains, rules),
    /// without reading any set element.
    pub fn structure_in_sync(&self, desired: &Ruleset) -> Result<bool, NftError> {
        let mut bare = desired.clone();
        for t in &mut bare.tables {
            for s in &mut t.sets {
                s.elements.clear();
            }
        }
        Ok(diff(&bare, &self.read_structure()?).is_empty())
    }

    /// The live state as the diff needs it: elements, chain hooks, rule comments and
    /// counters. Over nfnetlink when on (≈ 10× faster than nft's listing; rules then carry
    /// no `expr`), else the same as [`Backend::read_live`].
    pub fn read_for_diff(&self) -> Result<LiveState, NftError> {
        if !self.netlink_reads {
            return self.read_live();
        }
        FAMILIES
            .iter()
            .map(|f| Ok((*f, netlink::read_table(*f)?)))
            .collect()
    }

    /// Every table netguard owns as nft lists it (rules with their statements).
    pub fn read_live(&self) -> Result<LiveState, NftError> {
        FAMILIES
            .iter()
            .map(|f| Ok((*f, self.read_table(*f)?)))
            .collect()
    }

    /// Applies `changes` (computed against the live state just read) in one transaction.
    /// Element-only changes (a container event) go straight over nfnetlink when netlink
    /// is on: ≈ 10× cheaper than libnftables, which lists every set first.
    pub fn apply(&self, changes: &Changes) -> Result<(), NftError> {
        if changes.is_empty() {
            return Ok(());
        }
        if let Some(json) = fault::failing_batch(changes) {
            self.exec.run(&json)?;
            return Ok(());
        }
        // Port sets (intervals) change with the policy only, through libnftables.
        let ranges = changes.tables.iter().any(|t| {
            t.add_elements
                .values()
                .chain(t.delete_elements.values())
                .flatten()
                .any(|e| e.kind() == SetKind::Ports)
        });
        if self.netlink_reads && changes.only_elements() && !ranges {
            let mut ops = Vec::new();
            for t in &changes.tables {
                let Some(f) = t.family else { continue };
                for (set, elems) in &t.delete_elements {
                    ops.push(netlink::ElementOp {
                        family: f,
                        set,
                        add: false,
                        elems,
                    });
                }
                for (set, elems) in &t.add_elements {
                    ops.push(netlink::ElementOp {
                        family: f,
                        set,
                        add: true,
                        elems,
                    });
                }
            }
            return Ok(netlink::apply_elements(&ops)?);
        }
        let json =
            serde_json::to_string(&changes.batch()).map_err(|e| NftError::Encode(e.to_string()))?;
        if let Some(decls) = changes.raw_set_decls() {
            self.exec.run_text(&decls)?;
        }
        self.exec.run(&json)?;
        // Queue rules go in after the chains they end were written (`netlink::
        // append_queue_rules`). Meanwhile their packets meet the rules after the chain:
        // the drop, as with no daemon listening.
        let queued = changes.queue_rules();
        if !queued.is_empty() {
            netlink::append_queue_rules(&queued).map_err(|e| NftError::Queue(e.to_string()))?;
        }
        Ok(())
    }

    /// Reconciles the kernel with `desired`: read, diff, apply. Returns what changed.
    pub fn reconcile(&self, desired: &Ruleset) -> Result<Changes, NftError> {
        let live = self.read_for_diff()?;
        let changes = diff(desired, &live);
        self.apply(&changes)?;
        Ok(changes)
    }

    /// Deletes netguard's own tables, nothing else. Returns the tables removed.
    pub fn uninstall(&self) -> Result<Vec<Family>, NftError> {
        let live = self.read_live()?;
        let present: Vec<Family> = live
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(f, _)| *f)
            .collect();
        if present.is_empty() {
            return Ok(present);
        }
        let objects: Vec<NfObject> = present
            .iter()
            .map(|f| NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(render::table_obj(*f)))))
            .collect();
        let json = serde_json::to_string(&Nftables {
            objects: objects.into(),
        })
        .map_err(|e| NftError::Encode(e.to_string()))?;
        self.exec.run(&json)?;
        Ok(present)
    }
}

/// What one table needs to become the desired one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableChanges {
    pub family: Option<Family>,
    pub create_table: bool,
    pub delete_table: bool,
    pub create_sets: Vec<(String, SetKind)>,
    /// Sets that are obsolete, or whose type was changed by hand (then also re-created).
    pub delete_sets: Vec<String>,
    pub create_chains: Vec<String>,
    pub delete_chains: Vec<String>,
    /// Chains whose rules are replaced (flush + add, inside the same transaction).
    pub rewrite_chains: Vec<String>,
    pub add_elements: BTreeMap<String, Vec<Elem>>,
    pub delete_elements: BTreeMap<String, Vec<Elem>>,
    /// For display: rule comments that appear and disappear.
    pub added_rules: Vec<String>,
    pub removed_rules: Vec<String>,
    #[serde(skip)]
    desired: Option<Table>,
    #[serde(skip)]
    live_chains: Vec<String>,
}

impl TableChanges {
    pub fn is_empty(&self) -> bool {
        !self.create_table
            && !self.delete_table
            && self.create_sets.is_empty()
            && self.delete_sets.is_empty()
            && self.create_chains.is_empty()
            && self.delete_chains.is_empty()
            && self.rewrite_chains.is_empty()
            && self.add_elements.is_empty()
            && self.delete_elements.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub tables: Vec<TableChanges>,
}

impl Changes {
    /// A change of set elements only, for tables that already have the right structure.
    pub fn elements_only(
        add: BTreeMap<Family, BTreeMap<String, Vec<Elem>>>,
        delete: BTreeMap<Family, BTreeMap<String, Vec<Elem>>>,
    ) -> Changes {
        let tables = FAMILIES
            .iter()
            .map(|f| TableChanges {
                family: Some(*f),
                add_elements: add.get(f).cloned().unwrap_or_default(),
                delete_elements: delete.get(f).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        Changes { tables }
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(TableChanges::is_empty)
    }

    /// Only set elements change: no table, set, chain or rule is created or removed.
    pub fn only_elements(&self) -> bool {
        self.tables.iter().all(|t| {
            !t.create_table
                && !t.delete_table
                && t.create_sets.is_empty()
                && t.delete_sets.is_empty()
                && t.create_chains.is_empty()
                && t.delete_chains.is_empty()
                && t.rewrite_chains.is_empty()
        })
    }

    /// Every kind of object that changes, counted: `1 chain to rewrite, 2 rules to add,
    /// 2 rules to remove, 2 elements to remove` (`done`: `rewritten`, `added`, ...).
    /// Element counts alone hid rule changes ("0 elements to add" for a policy change).
    pub fn summary(&self, done: bool) -> String {
        let mut n = [0usize; 11];
        for t in self.tables.iter().filter(|t| !t.is_empty()) {
            n[0] += usize::from(t.create_table);
            n[1] += usize::from(t.delete_table);
            n[2] += t.create_sets.len();
            n[3] += t.delete_sets.len();
            n[4] += t.create_chains.len();
            n[5] += t.delete_chains.len();
            // Chains created here are filled, not rewritten.
            n[6] += t
                .rewrite_chains
                .iter()
                .filter(|c| !t.create_chains.contains(c))
                .count();
            n[7] += t.added_rules.len();
            n[8] += t.removed_rules.len();
            n[9] += t.add_elements.values().map(Vec::len).sum::<usize>();
            n[10] += t.delete_elements.values().map(Vec::len).sum::<usize>();
        }
        let what = [
            ("table", "create", "created"),
            ("table", "delete", "deleted"),
            ("set", "create", "created"),
            ("set", "delete", "deleted"),
            ("chain", "create", "created"),
            ("chain", "delete", "deleted"),
            ("chain", "rewrite", "rewritten"),
            ("rule", "add", "added"),
            ("rule", "remove", "removed"),
            ("element", "add", "added"),
            ("element", "remove", "removed"),
        ];
        let parts: Vec<String> = n
            .iter()
            .zip(what)
            .filter(|(count, _)| **count > 0)
            .map(|(count, (noun, verb, past))| {
                let s = if *count == 1 { "" } else { "s" };
                if done {
                    format!("{count} {noun}{s} {past}")
                } else {
                    format!("{count} {noun}{s} to {verb}")
                }
            })
            .collect();
        if parts.is_empty() {
            "no changes".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// Number of set elements added and removed.
    pub fn element_counts(&self) -> (usize, usize) {
        let count = |m: &BTreeMap<String, Vec<Elem>>| m.values().map(Vec::len).sum::<usize>();
        self.tables.iter().fold((0, 0), |(a, d), t| {
            (a + count(&t.add_elements), d + count(&t.delete_elements))
        })
    }

    /// The transaction, in an order the kernel accepts: containers before contents, rule
    /// removal before the removal of what the rules referenced.
    pub fn batch(&self) -> Nftables<'static> {
        let mut o: Vec<NfObject<'static>> = Vec::new();
        let add = |x: NfListObject<'static>| NfObject::CmdObject(NfCmd::Add(x));
        for t in self.tables.iter().filter(|t| !t.is_empty()) {
            let Some(f) = t.family else { continue };
            if t.delete_table {
                o.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
                    render::table_obj(f),
                ))));
                continue;
            }
            // Without a desired table this is an element-only change (the daemon's per-event
            // path): the sets must exist; if they do not, the transaction fails whole and the
            // caller reconciles fully.
            if let Some(desired) = &t.desired {
                o.push(add(NfListObject::Table(render::table_obj(f))));
                for chain in &t.rewrite_chains {
                    if t.live_chains.contains(chain) {
                        o.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(
                            render::chain_ref(f, chain),
                        ))));
                    }
                }
                for c in &t.delete_chains {
                    o.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Chain(
                        render::chain_ref(f, c),
                    ))));
                }
                // Raw-keyed sets are declared (and re-declared) before this transaction,
                // in nft's text syntax: `Changes::raw_set_decls`.
                let raw = |name: &str| t.create_sets.iter().any(|(n, k)| n == name && k.is_raw());
                for s in t.delete_sets.iter().filter(|s| !raw(s)) {
                    o.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Set(
                        Box::new(render::set_obj(f, s, SetKind::Ifname)),
                    ))));
                }
                for (name, kind) in t.create_sets.iter().filter(|(n, _)| !raw(n)) {
                    o.push(add(NfListObject::Set(Box::new(render::set_obj(
                        f, name, *kind,
                    )))));
                }
                for c in desired
                    .chains
                    .iter()
                    .filter(|c| t.create_chains.contains(&c.name))
                {
                    o.push(add(NfListObject::Chain(render::chain_obj(f, c))));
                }
            }
            for (set, elems) in &t.delete_elements {
                o.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Element(
                    render::element_obj(f, set, elems.iter()),
                ))));
            }
            for (set, elems) in &t.add_elements {
                o.push(add(NfListObject::Element(render::element_obj(
                    f,
                    set,
                    elems.iter(),
                ))));
            }
            for c in t
                .desired
                .iter()
                .flat_map(|d| &d.chains)
                .filter(|c| t.rewrite_chains.contains(&c.name))
            {
                // A queue rule ends its chain and is appended after this transaction.
                for r in c.rules.iter().filter(|r| !is_queue(r)) {
                    o.push(add(render::rule_obj(f, &c.name, r)));
                }
            }
        }
        Nftables { objects: o.into() }
    }
}

fn is_queue(r: &Rule) -> bool {
    matches!(r.verdict, Verdict::Queue(_))
}

impl Changes {
    /// nft text declaring the raw-keyed sets this change creates, run just before its
    /// transaction (nft 1.0.6's JSON cannot declare them; it can fill and use them once
    /// they exist). An empty set in a table changes no verdict, so declaring them first is
    /// safe; if the transaction then fails they stay, empty, and the next reconcile finds
    /// them. A raw set re-created (its type was changed by hand) is deleted here first,
    /// after the planned chains that may use it are flushed: the one case where the
    /// bridge table judges nothing for the moment until the transaction. Only netguard's
    /// own constant names are written.
    pub fn raw_set_decls(&self) -> Option<String> {
        let mut cmds = Vec::new();
        for t in self
            .tables
            .iter()
            .filter(|t| !t.is_empty() && !t.delete_table)
        {
            let Some(f) = t.family else { continue };
            let decls: Vec<(&str, String)> = t
                .create_sets
                .iter()
                .filter_map(|(n, k)| render::raw_set_decl(f, n, *k).map(|d| (n.as_str(), d)))
                .collect();
            if decls.is_empty() {
                continue;
            }
            cmds.push(format!("add table {} {TABLE_NAME}", f.as_str()));
            let again: Vec<&str> = decls
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| t.delete_sets.iter().any(|d| d == n))
                .collect();
            if !again.is_empty() {
                for c in t.desired.iter().flat_map(|d| &d.chains) {
                    if t.live_chains.contains(&c.name) {
                        cmds.push(format!(
                            "flush chain {} {TABLE_NAME} {}",
                            f.as_str(),
                            c.name
                        ));
                    }
                }
                for n in again {
                    cmds.push(format!("delete set {} {TABLE_NAME} {n}", f.as_str()));
                }
            }
            cmds.extend(decls.into_iter().map(|(_, d)| d));
        }
        (!cmds.is_empty()).then(|| cmds.join("\n"))
    }

    /// The queue rules of the chains this change writes, in order (see [`Backend::apply`]).
    pub fn queue_rules(&self) -> Vec<(Family, &str, &Rule)> {
        let mut out = Vec::new();
        for t in self
            .tables
            .iter()
            .filter(|t| !t.is_empty() && !t.delete_table)
        {
            let Some(f) = t.family else { continue };
            for c in t
                .desired
                .iter()
                .flat_map(|d| &d.chains)
                .filter(|c| t.rewrite_chains.contains(&c.name))
            {
                for r in c.rules.iter().filter(|r| is_queue(r)) {
                    out.push((f, c.name.as_str(), r));
                }
            }
        }
        out
    }
}

/// Compares the desired ruleset with the live state. Pure.
pub fn diff(desired: &Ruleset, live: &LiveState) -> Changes {
    let mut tables = Vec::new();
    for f in FAMILIES {
        let want = desired.table(f);
        let have = live.get(&f).and_then(|t| t.as_ref());
        tables.push(diff_table(f, want, have));
    }
    Changes { tables }
}

fn diff_table(f: Family, want: Option<&Table>, have: Option<&LiveTable>) -> TableChanges {
    let mut c = TableChanges {
        family: Some(f),
        ..Default::default()
    };
    let Some(want) = want else {
        c.delete_table = have.is_some();
        return c;
    };
    c.desired = Some(want.clone());
    let empty = LiveTable::default();
    c.create_table = have.is_none();
    let have = have.unwrap_or(&empty);
    c.live_chains = have.chains.keys().cloned().collect();

    let wanted_sets: BTreeSet<&str> = want.sets.iter().map(|s| s.name.as_str()).collect();
    for s in &want.sets {
        match have.sets.get(&s.name) {
            Some(l) if l.kind == Some(s.kind) => {
                let add: Vec<Elem> = s.elements.difference(&l.elements).cloned().collect();
                let del: Vec<Elem> = l.elements.difference(&s.elements).cloned().collect();
                if !add.is_empty() {
                    c.add_elements.insert(s.name.clone(), add);
                }
                if !del.is_empty() {
                    c.delete_elements.insert(s.name.clone(), del);
                }
            }
            other => {
                if other.is_some() {
                    c.delete_sets.push(s.name.clone());
                }
                c.create_sets.push((s.name.clone(), s.kind));
                if !s.elements.is_empty() {
                    c.add_elements
                        .insert(s.name.clone(), s.elements.iter().cloned().collect());
                }
            }
        }
    }
    c.delete_sets.extend(
        have.sets
            .keys()
            .filter(|n| !wanted_sets.contains(n.as_str()))
            .cloned(),
    );

    let wanted_chains: BTreeSet<&str> = want.chains.iter().map(|c| c.name.as_str()).collect();
    let mut rebased = Vec::new();
    for ch in &want.chains {
        match have.chains.get(&ch.name) {
            None => c.create_chains.push(ch.name.clone()),
            Some(l) if l.base != ch.base => {
                rebased.push(ch.name.clone());
                c.create_chains.push(ch.name.clone());
            }
            Some(_) => {}
        }
    }
    c.delete_chains.extend(
        have.chains
            .keys()
            .filter(|n| !wanted_chains.contains(n.as_str()))
            .cloned(),
    );
    c.delete_chains.extend(rebased.iter().cloned());

    // Rules: compare fingerprints chain by chain. Deleting a set or chain needs every rule
    // referring to it gone first, so any structural change rewrites every chain.
    let structural = !c.delete_sets.is_empty() || !c.delete_chains.is_empty();
    for ch in &want.chains {
        let desired_fp: Vec<Option<u64>> = ch
            .rules
            .iter()
            .map(|r| Some(render::fingerprint(r)))
            .collect();
        let live_rules = have
            .chains
            .get(&ch.name)
            .map(|l| l.rules.as_slice())
            .unwrap_or(&[]);
        let live_fp: Vec<Option<u64>> = live_rules
            .iter()
            .map(|r| r.comment.as_deref().and_then(render::comment_fingerprint))
            .collect();
        let recreated = rebased.contains(&ch.name);
        if structural || recreated || desired_fp != live_fp {
            c.rewrite_chains.push(ch.name.clone());
            let live_set: BTreeSet<Option<u64>> = live_fp.iter().copied().collect();
            let want_set: BTreeSet<Option<u64>> = desired_fp.iter().copied().collect();
            for r in &ch.rules {
                if !live_set.contains(&Some(render::fingerprint(r))) {
                    c.added_rules.push(format!("{}: {}", ch.name, r.comment));
                }
            }
            for (r, fp) in live_rules.iter().zip(&live_fp) {
                if !want_set.contains(fp) {
                    let text = r
                        .comment
                        .as_deref()
                        .unwrap_or("(rule without netguard comment)");
                    c.removed_rules.push(format!("{}: {}", ch.name, text));
                }
            }
        }
    }
    // Chains being deleted and re-created need no flush; the rewrite adds their rules.
    c.live_chains.retain(|n| !c.delete_chains.contains(n));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge_table() -> Table {
        let policy =
            crate::policy::parse_policy(std::path::Path::new("p.toml"), "").expect("policy");
        let inv = crate::inventory::parse_inventory(std::path::Path::new("i.toml"), "")
            .expect("inventory");
        crate::plan::plan(&policy, &inv)
            .ruleset
            .table(Family::Bridge)
            .cloned()
            .expect("bridge table")
    }

    fn live_bridge(t: &Table, nd_bind_6: Option<SetKind>) -> LiveState {
        let mut live = LiveTable::default();
        for s in &t.sets {
            let kind = if s.name == crate::plan::names::ND_BIND_6 {
                nd_bind_6
            } else {
                Some(s.kind)
            };
            live.sets.insert(
                s.name.clone(),
                live::LiveSet {
                    kind,
                    elements: BTreeSet::new(),
                },
            );
        }
        for c in &t.chains {
            live.chains.insert(
                c.name.clone(),
                live::LiveChain {
                    base: c.base,
                    rules: vec![],
                },
            );
        }
        [(Family::Inet, None), (Family::Bridge, Some(live))].into()
    }

    /// The sets a batch adds and deletes, by name.
    fn set_cmds(c: &Changes) -> (Vec<String>, Vec<String>) {
        let doc = serde_json::to_value(c.batch()).expect("json");
        let mut out = (vec![], vec![]);
        for cmd in doc["nftables"].as_array().expect("array") {
            for (verb, list) in [("add", &mut out.0), ("delete", &mut out.1)] {
                if let Some(name) = cmd[verb]["set"]["name"].as_str() {
                    list.push(name.to_string());
                }
            }
        }
        out
    }

    /// nft's JSON cannot declare the raw-keyed sets: they are declared in its text syntax
    /// before the transaction, which then leaves them out (and never deletes one it needs).
    #[test]
    fn raw_sets_are_declared_in_text_before_the_transaction() {
        let t = bridge_table();
        let desired = Ruleset {
            tables: vec![t.clone()],
        };
        let fresh = diff(&desired, &LiveState::new());
        assert_eq!(
            fresh.raw_set_decls().as_deref(),
            Some(
                "add table bridge netguard\n\
                 add set bridge netguard nd_addrs_6 { typeof @th,64,128; }\n\
                 add set bridge netguard nd_bind_6 { typeof iifname . @th,64,128; }\n\
                 add set bridge netguard nd_bind_mac { typeof iifname . @th,208,48; }\n\
                 add set bridge netguard nd_macs { typeof @th,208,48; }"
            )
        );
        let (added, deleted) = set_cmds(&fresh);
        assert!(added.contains(&"bind_6".to_string()), "{added:?}");
        assert!(added.iter().all(|n| !n.starts_with("nd_")), "{added:?}");
        assert!(deleted.is_empty());

        // In place: nothing to declare.
        let same = diff(&desired, &live_bridge(&t, Some(SetKind::RawIfnameV6)));
        assert_eq!(same.raw_set_decls(), None);

        // Changed by hand: the planned chains are emptied, the set re-declared, and the
        // transaction neither deletes nor adds it again.
        let wrong = diff(&desired, &live_bridge(&t, None));
        let text = wrong.raw_set_decls().expect("re-declared");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "add table bridge netguard",
                "flush chain bridge netguard prerouting",
                "flush chain bridge netguard postrouting",
                "flush chain bridge netguard foreign_mac",
                "flush chain bridge netguard nd",
                "delete set bridge netguard nd_bind_6",
                "add set bridge netguard nd_bind_6 { typeof iifname . @th,64,128; }",
            ]
        );
        assert_eq!(set_cmds(&wrong), (vec![], vec![]));
    }
}
