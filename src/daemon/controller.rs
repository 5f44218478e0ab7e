//! The controller loop: events → coalesce → engine delta → one transaction; full syncs at
//! start, on network changes, reload and reconnect; periodic resync; signals.
//!
//! It never removes rules on its way out: SIGTERM leaves the kernel as it is (fail closed),
//! and a broken Docker stream keeps the rules while it reconnects.

use super::early::{Action, Early};
use super::engine::{Delta, Engine};
use super::notify::notify;
use super::source::{Change, Source, Stamped};
use crate::bridge::{BridgeControl, NetlinkBridges};
use crate::conntrack::{Conntrack, Ctnetlink, revoked};
use crate::docker::ContainerState;
use crate::docker::early::EarlyChange;
use crate::inventory::Inventory;
use crate::nft::{Backend, Changes, NftError};
use crate::plan::Plan;
use crate::plan::ruleset::{Elem, Family, Ruleset};
use crate::policy::{Policy, load_policy};
use crate::state::DaemonState;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// An [`EarlyPath`] over the controller `$c`'s fields: a macro, not a method, so that it
/// borrows those fields alone and `$c.source` stays free for the request it runs beside.
macro_rules! early_path {
    ($c:ident, $held:expr, $failed:expr) => {
        EarlyPath {
            rx: &mut $c.early_rx,
            engine: &mut $c.engine,
            early: &mut $c.early,
            enforcer: &mut $c.enforcer,
            held: $held,
            failed: $failed,
            released: &$c.released,
        }
    };
}

/// Pings systemd's watchdog while the controller loop keeps beating: a loop stuck for longer
/// than the watchdog allows stops the pings and systemd restarts netguard.
async fn watchdog(heartbeat: Arc<AtomicU64>, every: Duration) {
    let mut t = tokio::time::interval(every);
    loop {
        t.tick().await;
        let age = now_ms().saturating_sub(heartbeat.load(Ordering::Relaxed));
        if age <= (every.as_millis() as u64).saturating_mul(3) / 2 {
            notify("WATCHDOG=1");
        } else {
            tracing::warn!(
                stalled_ms = age,
                "controller loop stalled; not feeding the watchdog"
            );
        }
    }
}

/// What the loop is told from outside: signals in production, a channel in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Exit; the rules stay in place. Carries the reason for the log.
    Stop(&'static str),
    /// Re-read the policy (SIGHUP).
    Reload,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Full resync and drift repair.
    pub resync: Duration,
    /// After an apply, changes arriving within this window wait for its end and go in one
    /// transaction: the first event of a burst is applied at once, the rest coalesce.
    pub coalesce: Duration,
    /// Every Nth resync also lists set elements (element drift); the others only check the
    /// structure, whose cost does not grow with the number of containers.
    pub element_check_every: u32,
    pub state_file: Option<PathBuf>,
    /// Prometheus metrics listener (opt-in).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Options {
    pub fn new(config: PathBuf) -> Options {
        Options {
            config,
            resync: Duration::from_secs(300),
            coalesce: Duration::from_millis(20),
            element_check_every: 12,
            state_file: Some(PathBuf::from(crate::state::DEFAULT_PATH)),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("{0}")]
    Bridge(String),
}

/// What the controller does to the kernel. Real: nft + netlink + conntrack; fakes in tests.
#[allow(async_fn_in_trait)]
pub trait Enforcer {
    async fn prepare_bridges(&mut self, bridges: &[String]) -> Result<(), EnforceError>;
    fn tables_present(&mut self) -> Result<bool, EnforceError>;
    fn reconcile(&mut self, desired: &Ruleset) -> Result<Changes, EnforceError>;
    fn apply(&mut self, delta: &Delta) -> Result<(), EnforceError>;
    fn structure_in_sync(&mut self, desired: &Ruleset) -> Result<bool, EnforceError>;
    /// Cuts open connections from and to addresses that left.
    fn cut(&mut self, addrs: &BTreeSet<IpAddr>);
    /// Like `cut`, but done when it returns: before an address is admitted for a new holder,
    /// no connection of a previous holder may be left for the new one to ride on.
    fn cut_now(&mut self, addrs: &BTreeSet<IpAddr>) {
        self.cut(addrs);
    }
    /// Whether a cut of `addr` that began at or after `since` has completed (every
    /// connection of that address found then was deleted). Not known: `false`, so the caller
    /// cuts again.
    fn cut_since(&mut self, _addr: &IpAddr, _since: Instant) -> bool {
        false
    }
    /// Cuts open connections the plan no longer allows (all, or those touching `only`).
    fn rejudge(&mut self, plan: &Plan, only: Option<&BTreeSet<IpAddr>>);
    /// How the cuts went since the last call (a cut that fails, ctnetlink down, is kept
    /// owed: see [`Enforcer::retry_cuts`]).
    fn cut_status(&mut self) -> CutStatus {
        CutStatus::default()
    }
    /// Tries the owed cuts again, judging connections by `plan` (the current one).
    fn retry_cuts(&mut self, _plan: &Plan) {}
}

/// What [`Enforcer::cut_status`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutStatus {
    /// Cuts that failed since the last report.
    pub failed: u32,
    /// The last failure's error.
    pub error: Option<String>,
    /// Some connection is still to be cut.
    pub owed: bool,
}

/// Cuts that failed and are still to be done, shared by the controller and the cutter thread.
#[derive(Debug, Default)]
struct Owed {
    /// Connections from and to these addresses.
    addrs: BTreeSet<IpAddr>,
    /// Connections the plan no longer allows: all of them, judged again by the current plan
    /// when retried (a narrower judgement would be a subset of that one).
    rejudge: bool,
    failed: u32,
    error: Option<String>,
}

impl Owed {
    fn failed(&mut self, e: crate::nfnetlink::NetlinkError) {
        self.failed = self.failed.saturating_add(1);
        self.error = Some(format!("conntrack: {e}"));
    }
}

pub struct Kernel {
    backend: Backend,
    bridges: Option<NetlinkBridges>,
    conntrack: Arc<dyn Conntrack + Send + Sync>,
    /// Addresses whose connections the cutter thread deletes, started on first use.
    /// Addresses to cut, and when they were queued.
    cutter: Option<std::sync::mpsc::Sender<(Vec<IpAddr>, Instant)>>,
    owed: Arc<std::sync::Mutex<Owed>>,
    /// When the last cut of each address that went through began (see [`CutsDone`]).
    done: Arc<std::sync::Mutex<CutsDone>>,
    /// Held by whoever cuts (the cutter thread, `cut_now`): a cut at an admission never
    /// runs beside a dump of the cutter's, which could otherwise reach the new holder's first
    /// connection after the admission and delete it.
    cut_lock: Arc<std::sync::Mutex<()>>,
    /// Holds the packets the `hold` chain queues, while the committed ruleset has one.
    holder: Option<super::hold::Holder>,
}

/// When the last complete cut of each address began, for [`Enforcer::cut_since`]: an
/// address handed to a new endpoint right after it left is cut again before the admission
/// only when the cut of its leaving has not gone through yet. Each cut is one dump of the
/// whole conntrack table, which costs the same however few connections it holds (the
/// kernel walks every bucket: 262,144 of them on a host with 24 GiB), so a `docker run`
/// right after another's `die` paid two where one does.
#[derive(Debug, Default)]
struct CutsDone(BTreeMap<IpAddr, Instant>);

impl CutsDone {
    fn note(&mut self, addrs: &[IpAddr], began: Instant) {
        // Only recent cuts are asked about (within RELEASE_CUT_WINDOW of the release).
        self.0
            .retain(|_, t| began.duration_since(*t) < RELEASE_CUT_WINDOW * 2);
        for a in addrs {
            self.0.insert(*a, began);
        }
    }
}

impl Kernel {
    pub fn new(backend: Backend) -> Kernel {
        Kernel {
            backend,
            bridges: None,
            conntrack: Arc::new(Ctnetlink),
            cutter: None,
            owed: Arc::default(),
            done: Arc::default(),
            cut_lock: Arc::default(),
            holder: None,
        }
    }

    /// After a committed full ruleset: the holder follows its queue rule (started, moved
    /// to another queue number, or stopped) and its sets.
    fn follow_hold(&mut self, desired: &Ruleset) {
        let want = hold_queue(desired);
        if self.holder.as_ref().map(|h| h.num()) != want {
            // The old queue is closed first: a number can be bound by one socket only.
            self.holder = None;
            if let Some(num) = want {
                let hold = Duration::from_millis(crate::policy::HOLD_MS);
                match super::hold::Holder::start(num, hold, super::hold::Bindings::of(desired)) {
                    Ok(h) => self.holder = Some(h),
                    Err(e) => tracing::error!(
                        error = %e,
                        "cannot hold packets of containers not admitted yet: they are dropped \
                         until their admission (a container's first packets may be lost)"
                    ),
                }
                return;
            }
        }
        if let Some(h) = &self.holder {
            h.reset(desired);
        }
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, Owed> {
        // A panic elsewhere while holding it leaves plain data: still usable.
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the connections of `addrs` here; a failure leaves them owed.
    fn cut_here(&self, addrs: &[IpAddr]) {
        cut_or_owe(&*self.conntrack, &self.owed, &self.done, addrs);
    }

    /// One long-lived thread for cutting: a dump of the conntrack table grows with the host's
    /// connections, so it runs off the controller's path, and one batch at a time, so that
    /// churn does not pile dumps on each other.
    fn cutter(&mut self) -> Option<&std::sync::mpsc::Sender<(Vec<IpAddr>, Instant)>> {
        if self.cutter.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<(Vec<IpAddr>, Instant)>();
            let conntrack = self.conntrack.clone();
            let owed = self.owed.clone();
            let done = self.done.clone();
            let cut_lock = self.cut_lock.clone();
            let spawned = std::thread::Builder::new()
                .name("netguard-cut".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        // What queued up meanwhile is one dump, not one each.
                        let mut queued = vec![first];
                        while let Ok(more) = rx.try_recv() {
                            queued.push(more);
                        }
                        let _cutting = cut_lock.lock().unwrap_or_else(|e| e.into_inner());
                        let addrs = still_to_cut(&done, &queued);
                        if !addrs.is_empty() {
                            cut_or_owe(&*conntrack, &owed, &done, &addrs);
                        }
                    }
                });
            match spawned {
                Ok(_) => self.cutter = Some(tx),
                Err(e) => tracing::warn!("cannot start the thread that cuts connections: {e}"),
            }
        }
        self.cutter.as_ref()
    }
}

/// The queued addresses not cut since they were queued. An address handed to a new endpoint
/// is cut at that endpoint's admission (`cut_now`) when the cut of its leaving has not gone
/// through yet; cutting it once more, later, would delete the new holder's first connections,
/// which may be open by then.
fn still_to_cut(
    done: &std::sync::Mutex<CutsDone>,
    queued: &[(Vec<IpAddr>, Instant)],
) -> Vec<IpAddr> {
    let done = done.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<IpAddr> = queued
        .iter()
        .flat_map(|(addrs, at)| {
            addrs
                .iter()
                .filter(|a| done.0.get(a).is_none_or(|t| t < at))
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Deletes the connections of `addrs`; when ctnetlink fails, they stay owed for a retry,
/// when it works, the cut is noted as done from the moment it began.
fn cut_or_owe(
    conntrack: &(dyn Conntrack + Send + Sync),
    owed: &std::sync::Mutex<Owed>,
    done: &std::sync::Mutex<CutsDone>,
    addrs: &[IpAddr],
) {
    let began = Instant::now();
    match conntrack.try_delete_addresses(addrs) {
        Ok(()) => {
            tracing::debug!(
                ?addrs,
                took_ms = began.elapsed().as_secs_f64() * 1e3,
                "cut the connections of addresses"
            );
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(addrs, began)
        }
        Err(e) => {
            let mut o = owed.lock().unwrap_or_else(|e| e.into_inner());
            o.addrs.extend(addrs.iter().copied());
            o.failed(e);
        }
    }
}

/// The queue number of the `hold` chain's queue rule, if the ruleset has one.
fn hold_queue(rs: &Ruleset) -> Option<u16> {
    rs.table(crate::plan::ruleset::Family::Inet)?
        .chains
        .iter()
        .filter(|c| c.name == crate::plan::names::HOLD)
        .flat_map(|c| &c.rules)
        .find_map(|r| match r.verdict {
            crate::plan::ruleset::Verdict::Queue(n) => Some(n),
            _ => None,
        })
}

/// The per-event kernel path: one transaction of set elements. Public so the benchmarks
/// measure exactly what the daemon runs.
pub fn enforce_delta(backend: &Backend, delta: &Delta) -> Result<(), NftError> {
    backend.apply(&Changes::elements_only(
        delta.add.clone(),
        delta.delete.clone(),
    ))
}

impl Enforcer for Kernel {
    async fn prepare_bridges(&mut self, bridges: &[String]) -> Result<(), EnforceError> {
        if self.bridges.is_none() {
            self.bridges =
                Some(NetlinkBridges::connect().map_err(|e| EnforceError::Bridge(e.to_string()))?);
        }
        let Some(b) = &self.bridges else {
            return Ok(());
        };
        let missing = match b.ensure_nf_call(bridges).await {
            Ok(m) => m,
            Err(e) => {
                // The socket may be what failed: the next attempt opens a new one.
                if matches!(e, crate::bridge::BridgeError::Netlink(_)) {
                    self.bridges = None;
                }
                return Err(EnforceError::Bridge(e.to_string()));
            }
        };
        for m in missing {
            tracing::warn!(bridge = %m, "managed bridge does not exist on this host");
        }
        Ok(())
    }

    fn tables_present(&mut self) -> Result<bool, EnforceError> {
        Ok(self.backend.read_structure()?.values().any(Option::is_some))
    }

    fn reconcile(&mut self, desired: &Ruleset) -> Result<Changes, EnforceError> {
        let changes = self.backend.reconcile(desired)?;
        self.follow_hold(desired);
        Ok(changes)
    }

    fn apply(&mut self, delta: &Delta) -> Result<(), EnforceError> {
        enforce_delta(&self.backend, delta)?;
        if let Some(h) = &self.holder {
            h.apply(delta);
        }
        Ok(())
    }

    fn structure_in_sync(&mut self, desired: &Ruleset) -> Result<bool, EnforceError> {
        Ok(self.backend.structure_in_sync(desired)?)
    }

    fn cut(&mut self, addrs: &BTreeSet<IpAddr>) {
        // The addresses are already out of every set: nothing new can open meanwhile.
        let addrs: Vec<IpAddr> = addrs.iter().copied().collect();
        let queued = match self.cutter() {
            Some(tx) => tx.send((addrs, Instant::now())).map_err(|e| e.0.0),
            None => Err(addrs),
        };
        // No thread: cut here rather than not at all.
        if let Err(addrs) = queued {
            self.cut_here(&addrs);
        }
    }

    fn cut_now(&mut self, addrs: &BTreeSet<IpAddr>) {
        let addrs: Vec<IpAddr> = addrs.iter().copied().collect();
        let lock = self.cut_lock.clone();
        let _cutting = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cut_here(&addrs);
    }

    fn cut_since(&mut self, addr: &IpAddr, since: Instant) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(addr)
            .is_some_and(|t| *t >= since)
    }

    fn rejudge(&mut self, plan: &Plan, only: Option<&BTreeSet<IpAddr>>) {
        let r = self.conntrack.try_list().and_then(|entries| {
            for e in revoked(plan, &entries, only) {
                tracing::info!(proto = %e.proto, src = %e.src, dst = %e.dst, "cutting a connection the policy no longer allows");
                self.conntrack.try_delete(&e)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            let mut o = self.owed();
            o.rejudge = true;
            o.failed(e);
        }
    }

    fn cut_status(&mut self) -> CutStatus {
        let mut o = self.owed();
        let owed = o.rejudge || !o.addrs.is_empty();
        if !owed {
            o.error = None;
        }
        CutStatus {
            failed: std::mem::take(&mut o.failed),
            error: o.error.clone(),
            owed,
        }
    }

    fn retry_cuts(&mut self, plan: &Plan) {
        let (addrs, rejudge) = {
            let mut o = self.owed();
            (std::mem::take(&mut o.addrs), std::mem::take(&mut o.rejudge))
        };
        if !addrs.is_empty() {
            tracing::info!(
                addresses = addrs.len(),
                "retrying the cut of connections of addresses that left"
            );
            self.cut_here(&addrs.into_iter().collect::<Vec<_>>());
        }
        if rejudge {
            tracing::info!("retrying the cut of connections the policy no longer allows");
            self.rejudge(plan, None);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hooks for metrics; the default does nothing.
pub trait Observer {
    fn reconciled(&self, _took: Duration, _ok: bool) {}
    fn enforced(&self, _event_to_rules: Duration) {}
    /// Containers with an endpoint on a managed network, after each change.
    fn containers(&self, _n: usize) {}
    fn error(&self, _kind: &'static str) {}
    /// Pairs of containers breaking a `[[separate]]` line, after each change.
    fn separation_violations(&self, _n: usize) {}
}

pub struct NoObserver;
impl Observer for NoObserver {}

pub struct Controller<S: Source, E: Enforcer> {
    pub opts: Options,
    pub source: S,
    pub enforcer: E,
    pub engine: Engine,
    pub state: DaemonState,
    pub observer: Box<dyn Observer>,
    separation: super::separation::Separation,
    resyncs: u32,
    /// Something failed since the last full sync; the next resync does a full one.
    dirty: bool,
    /// Containers admitted before Docker reported them running.
    pub early: Early,
    /// The source's early changes (see [`admitting`]).
    early_rx: Option<mpsc::Receiver<EarlyChange>>,
    /// Addresses that left recently, and when: their connections are being cut off the
    /// loop, and an early admission of one of them waits for that cut (see [`EarlyPath`]).
    released: BTreeMap<IpAddr, Instant>,
    /// The last state file write failed (see [`Controller::write_state`]).
    state_unwritable: std::sync::atomic::AtomicBool,
    /// Connections are owed a cut that failed (ctnetlink): the error, standing in
    /// `last_error` until a retry succeeds (see [`Controller::check_cuts`]).
    cut_error: Option<String>,
    /// Containers whose host veth netlink failed to resolve: id → (name, error). Mapped
    /// without it, so not admitted (fail closed), and asked again with backoff until
    /// resolved (see [`Controller::check_veths`]).
    veth_owed: BTreeMap<String, (String, String)>,
    /// Containers a read failed to resolve since the last check (counted there).
    veth_failed: u32,
    /// The error standing in `last_error` while a veth is owed.
    veth_error: Option<String>,
}

/// A batch of changes with the time the first of them was received.
#[derive(Debug, Default)]
pub struct Batch {
    pub first: Option<Instant>,
    /// Last change per container wins (a stop after a start means stopped).
    pub containers: BTreeMap<String, bool>,
    pub networks: bool,
    /// When the last stop/die/destroy of each container was received.
    pub gone_at: BTreeMap<String, Instant>,
}

impl Batch {
    pub fn add(&mut self, c: Change, at: Instant) {
        self.first.get_or_insert(at);
        match c {
            Change::Container(id) => {
                self.containers.insert(id, true);
            }
            Change::Gone(id) => {
                self.gone_at.insert(id.clone(), at);
                self.containers.insert(id, false);
            }
            Change::Networks => self.networks = true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && !self.networks
    }
}

/// The batch an event starts: the first change of a burst goes at once; changes arriving
/// within `coalesce` of the previous apply wait for the end of that window and go together.
pub async fn gather(
    first: Stamped,
    rx: &mut mpsc::Receiver<Stamped>,
    last_apply: Option<Instant>,
    coalesce: Duration,
) -> Batch {
    let mut batch = Batch::default();
    batch.add(first.0, first.1);
    // One reading of the clock: comparing one `elapsed()` and subtracting another panicked
    // ("overflow when subtracting durations") when the window ended between the two.
    if let Some(rest) = last_apply.map(|t| coalesce.saturating_sub(t.elapsed()))
        && !rest.is_zero()
    {
        tokio::time::sleep(rest).await;
    }
    while let Ok((c, at)) = rx.try_recv() {
        batch.add(c, at);
    }
    batch
}

/// Folds `next` into `acc` so that the result is the net change of both, in order.
pub fn merge(acc: &mut Delta, next: Delta) {
    type Sets = BTreeMap<Family, BTreeMap<String, Vec<Elem>>>;
    fn take(m: &mut Sets, f: Family, s: &str, e: &Elem) -> bool {
        let Some(v) = m.get_mut(&f).and_then(|x| x.get_mut(s)) else {
            return false;
        };
        let before = v.len();
        v.retain(|x| x != e);
        before != v.len()
    }
    fn put(m: &mut Sets, f: Family, s: &str, e: Elem) {
        m.entry(f)
            .or_default()
            .entry(s.to_string())
            .or_default()
            .push(e);
    }
    for (f, sets) in next.delete {
        for (s, elems) in sets {
            for e in elems {
                if !take(&mut acc.add, f, &s, &e) {
                    put(&mut acc.delete, f, &s, e);
                }
            }
        }
    }
    for (f, sets) in next.add {
        for (s, elems) in sets {
            for e in elems {
                if !take(&mut acc.delete, f, &s, &e) {
                    put(&mut acc.add, f, &s, e);
                }
            }
        }
    }
    for m in [&mut acc.add, &mut acc.delete] {
        for sets in m.values_mut() {
            sets.retain(|_, v| !v.is_empty());
        }
        m.retain(|_, s| !s.is_empty());
    }
    acc.gone.extend(next.gone);
    acc.regrouped.extend(next.regrouped);
}

/// While netlink fails to resolve a container's veths, an endpoint netguard already knows
/// keeps the veth it had: the last good state stays enforced, where dropping it would cut a
/// running container off at every full sync (a reload, a resync) for as long as netlink
/// fails. Only the same endpoint (network, bridge, MAC and addresses alike) keeps it; a
/// container seen for the first time, or an endpoint that changed, gets none (not admitted,
/// fail closed). A restart that went unseen keeps a veth that no longer exists: the
/// container is then unreachable until netlink answers, which fails closed too.
fn keep_known_veths(engine: &Engine, c: &mut crate::inventory::Container) {
    let Some(old) = engine.container(&c.id) else {
        return;
    };
    for ep in c.endpoints.iter_mut().filter(|e| e.veth.is_none()) {
        let same = old.endpoints.iter().find(|o| {
            o.network == ep.network
                && o.network_id == ep.network_id
                && o.bridge == ep.bridge
                && o.mac == ep.mac
                && o.ipv4 == ep.ipv4
                && o.ipv6 == ep.ipv6
        });
        if let Some(o) = same {
            ep.veth = o.veth.clone();
        }
    }
}

/// Admitted addresses and the (bridge, veth) that holds each.
fn admitted_addresses(plan: &Plan) -> BTreeMap<IpAddr, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    for c in &plan.containers {
        for e in c.endpoints.iter().filter(|e| e.admitted) {
            for a in e.addresses() {
                out.insert(a, (e.bridge.clone(), e.veth.clone()));
            }
        }
    }
    out
}

impl<S: Source, E: Enforcer> Controller<S, E> {
    pub fn new(opts: Options, policy: Policy, source: S, enforcer: E) -> Controller<S, E> {
        let state = DaemonState {
            pid: std::process::id(),
            source: Some(source.describe()),
            started_unix_ms: now_ms(),
            containers: Some(0),
            connected: Some(false),
            ..Default::default()
        };
        Controller {
            opts,
            source,
            enforcer,
            engine: Engine::new(policy, Inventory::default()),
            state,
            observer: Box::new(NoObserver),
            separation: Default::default(),
            resyncs: 0,
            dirty: false,
            early: Early::default(),
            early_rx: None,
            released: BTreeMap::new(),
            state_unwritable: Default::default(),
            cut_error: None,
            veth_owed: BTreeMap::new(),
            veth_failed: 0,
            veth_error: None,
        }
    }

    /// Takes in the netlink failures of the read just made: all of them for a full read
    /// (`of` = None), else those of the containers `of` names (the others keep theirs).
    fn note_veth_failures(&mut self, of: Option<&str>) {
        let found = self.source.netlink_failures();
        match of {
            None => self.veth_owed.clear(),
            Some(id) => {
                self.veth_owed.remove(id);
            }
        }
        self.veth_failed = self
            .veth_failed
            .saturating_add(u32::try_from(found.len()).unwrap_or(u32::MAX));
        for f in found {
            self.veth_owed
                .insert(f.container_id, (f.container_name, f.error));
        }
    }

    /// Reports the host veths netlink could not resolve: each container a read failed to
    /// resolve counted (`errors_total{kind="veth"}`), the failure logged, the error in
    /// `last_error` while one is owed, cleared once the retries (see [`Controller::serve`])
    /// have resolved them all or the containers left. Everything else stays enforced
    /// meanwhile; a container seen for the first time stays unadmitted, a known one keeps its
    /// last veth (see [`keep_known_veths`]). Returns whether a veth is owed. The caller
    /// writes the state.
    fn check_veths(&mut self) -> bool {
        let failed = std::mem::take(&mut self.veth_failed);
        for _ in 0..failed {
            self.observer.error("veth");
        }
        // Named first: a container left without a veth (not admitted), rather than one that
        // keeps its last known veth.
        let unadmitted = self.veth_owed.iter().find(|(id, _)| {
            self.engine
                .container(id)
                .is_none_or(|c| c.endpoints.iter().any(|e| e.veth.is_none()))
        });
        if failed > 0
            && let Some((_, (name, err))) = unadmitted.or_else(|| self.veth_owed.iter().next())
        {
            let more = match self.veth_owed.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            let msg = format!(
                "cannot resolve the host veth of {name}{more}: {err}; a container not admitted \
                 yet stays so until it is, the others keep their last known veth; retrying"
            );
            tracing::error!(kind = "veth", containers = self.veth_owed.len(), "{msg}");
            self.state.last_error = Some(msg.clone());
            self.veth_error = Some(msg);
        } else if self.veth_owed.is_empty()
            && let Some(was) = self.veth_error.take()
        {
            tracing::info!("the host veths netlink could not resolve are resolved");
            if self.state.last_error.as_ref() == Some(&was) {
                self.state.last_error = None;
            }
        }
        !self.veth_owed.is_empty()
    }

    /// Takes in how the cuts went: each failure counted (`errors_total{kind="conntrack"}`)
    /// and logged, the error in `last_error` while a cut is owed, cleared once the retries
    /// (see [`Controller::serve`]) have done them all. The rules do not depend on it: new
    /// connections of a revoked pair are refused meanwhile, only those already open live on.
    /// Returns whether a cut is owed.
    fn check_cuts(&mut self) -> bool {
        let s = self.enforcer.cut_status();
        for _ in 0..s.failed {
            self.observer.error("conntrack");
        }
        let mut changed = false;
        if s.failed > 0 && s.owed {
            let msg = format!(
                "cannot cut open connections the policy no longer allows: {}; new ones are \
                 refused, the open ones are cut when a retry succeeds",
                s.error.as_deref().unwrap_or("conntrack failed")
            );
            tracing::error!(kind = "conntrack", failed = s.failed, "{msg}");
            self.state.last_error = Some(msg.clone());
            self.cut_error = Some(msg);
            changed = true;
        } else if !s.owed
            && let Some(was) = self.cut_error.take()
        {
            tracing::info!("the connections left open by the failed cut are cut");
            if self.state.last_error.as_ref() == Some(&was) {
                self.state.last_error = None;
            }
            changed = true;
        }
        if changed {
            self.write_state();
        }
        s.owed
    }

    fn error(&mut self, kind: &'static str, msg: String) {
        tracing::error!(kind, "{msg}");
        self.observer.error(kind);
        self.state.last_error = Some(msg);
        self.dirty = true;
    }

    /// Enforcement does not depend on the state file: a write that fails is counted each
    /// time (`errors_total{kind="state"}`) but logged once until a write works again, so an
    /// unwritable directory does not flood the log at every event.
    fn write_state(&self) {
        let Some(path) = &self.opts.state_file else {
            return;
        };
        match crate::state::write(path, &self.state) {
            Ok(()) => {
                if self.state_unwritable.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %path.display(), "the state file is written again");
                }
            }
            Err(e) => {
                self.observer.error("state");
                if !self.state_unwritable.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        kind = "state",
                        path = %path.display(),
                        "cannot write the state file: {e}; enforcement goes on, logged once until it works again"
                    );
                }
            }
        }
    }

    /// Before anything is known: if netguard has no tables, install them from the policy
    /// alone, so every managed (and every not yet known Docker) bridge is default-deny.
    /// Existing tables stay as they are: a restart must not open or close anything.
    pub fn install_skeleton(&mut self) {
        match self.enforcer.tables_present() {
            Ok(true) => tracing::info!(
                "netguard's tables are present; keeping them until the first reconcile"
            ),
            Ok(false) => {
                let plan = self.engine.plan();
                match self.enforcer.reconcile(&plan.ruleset) {
                    Ok(_) => {
                        tracing::info!("installed default-deny tables before reading the inventory")
                    }
                    Err(e) => self.error("nft", format!("cannot install netguard's tables: {e}")),
                }
            }
            Err(e) => self.error("nft", format!("cannot read netguard's tables: {e}")),
        }
    }

    /// Reads everything, replans, reconciles the kernel, cuts what is no longer allowed.
    pub async fn full_sync(&mut self) -> Result<(), ()> {
        let t0 = Instant::now();
        let mut held = Delta::default();
        let mut failed = false;
        let read = admitting(
            self.source.inventory(),
            early_path!(self, &mut held, &mut failed),
        )
        .await;
        let mut inv = match read {
            Ok(i) => i,
            Err(e) => {
                self.error(
                    "source",
                    format!("cannot read the inventory: {e}; rules stay as they are"),
                );
                return Err(());
            }
        };
        self.note_veth_failures(None);
        for c in inv.containers.iter_mut() {
            if self.veth_owed.contains_key(&c.id) {
                keep_known_veths(&self.engine, c);
            }
        }
        // The source lists running containers; the starting ones admitted early stay.
        self.early.complete(&mut inv, Instant::now());
        // Who held each admitted address before: a full sync can drop containers too
        // (reload, resync after missed events, reconnect, inventory file), and their open
        // connections must be cut like on a per-event removal.
        let before = admitted_addresses(&self.engine.plan());
        self.engine.reset(inv);
        let plan = self.engine.plan();
        let n = self.separation.reset(self.engine.policy(), &plan);
        self.observer.separation_violations(n);
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        // The rules do not depend on it and go in anyway (a revocation must not wait); the
        // error stands in `last_error` and the sync is retried until the bridges are ready.
        let bridges = match self.enforcer.prepare_bridges(&plan.managed_bridges()).await {
            Ok(()) => None,
            Err(e) => {
                let msg = format!("cannot prepare the managed bridges: {e}; retrying");
                self.error("bridge", msg.clone());
                Some(msg)
            }
        };
        match self.enforcer.reconcile(&plan.ruleset) {
            Ok(changes) => {
                let (a, d) = changes.element_counts();
                tracing::info!(
                    containers = self.engine.container_count(),
                    added = a,
                    removed = d,
                    took_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "reconciled"
                );
                let after = admitted_addresses(&plan);
                let left: BTreeSet<IpAddr> = before
                    .iter()
                    .filter(|(a, owner)| after.get(*a) != Some(*owner))
                    .map(|(a, _)| *a)
                    .collect();
                if !left.is_empty() {
                    tracing::info!(
                        addresses = left.len(),
                        "cutting connections of addresses that left or changed hands"
                    );
                    self.release(&left);
                    self.enforcer.cut(&left);
                }
                self.enforcer.rejudge(&plan, None);
                self.observer.reconciled(t0.elapsed(), true);
                self.observer.containers(self.engine.managed_count());
                self.state.reconciles += 1;
                self.state.last_reconcile_unix_ms = Some(now_ms());
                self.state.containers = Some(self.engine.container_count());
                // The tables are right; a bridge not ready, or a cut still owed, stays
                // reported.
                self.dirty = bridges.is_some();
                self.state.last_error = bridges
                    .or_else(|| self.cut_error.clone())
                    .or_else(|| self.veth_error.clone());
                self.check_cuts();
                self.check_veths();
                self.write_state();
                Ok(())
            }
            Err(e) => {
                self.observer.reconciled(t0.elapsed(), false);
                self.error(
                    "nft",
                    format!("reconcile failed: {e}; rules stay as they were"),
                );
                self.write_state();
                Err(())
            }
        }
    }

    /// Applies a batch of changes: only the set elements they concern, in one transaction.
    pub async fn process(&mut self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        self.state.events += batch.containers.len() as u64 + batch.networks as u64;
        self.state.last_event_unix_ms = Some(now_ms());
        self.refresh(batch).await;
    }

    /// [`Controller::process`] without counting events: also the retry of veths owed.
    async fn refresh(&mut self, batch: Batch) {
        for (id, at) in &batch.gone_at {
            self.early.gone(id, *at);
        }
        if batch.networks {
            let _ = self.full_sync().await;
            return;
        }
        let mut delta = Delta::default();
        let mut full = false;
        let mut early_failed = false;
        let mut queue: Vec<(String, bool)> = batch
            .containers
            .iter()
            .map(|(id, running)| (id.clone(), *running))
            .collect();
        let mut seen: BTreeSet<String> = batch.containers.keys().cloned().collect();
        let mut next = 0;
        while let Some((id, running)) = queue.get(next).cloned() {
            next += 1;
            // Docker sends no event for a container sharing this one's netns when this one
            // dies or is (dis)connected, yet its endpoints are this one's: without a refresh
            // it would keep the old ones, and its stale claim would contest the address's
            // next owner. Looked up before the change, while they still hold the old ones.
            for s in self.engine.sharers_of(&id) {
                if seen.insert(s.clone()) {
                    queue.push((s, true));
                }
            }
            let id = &id;
            let d = if !running {
                self.veth_owed.remove(id);
                self.engine.remove(id)
            } else {
                let asked = Instant::now();
                let read = admitting(
                    self.source.container(id),
                    early_path!(self, &mut delta, &mut early_failed),
                )
                .await;
                self.note_veth_failures(Some(id));
                match read {
                    Ok(ContainerState::Running(c)) if !self.engine.knows_networks_of(&c) => {
                        // On a network created since the last full sync: structure changes.
                        full = true;
                        continue;
                    }
                    Ok(ContainerState::Running(mut c)) => {
                        if self.veth_owed.contains_key(&c.id) {
                            keep_known_veths(&self.engine, &mut c);
                        }
                        let c = self.early.running(c, Instant::now());
                        tracing::debug!(
                            container = %c.name,
                            endpoints = ?c.endpoints.iter().map(|e| (&e.network, &e.veth, e.ipv4)).collect::<Vec<_>>(),
                            took_ms = asked.elapsed().as_secs_f64() * 1e3,
                            "refreshed"
                        );
                        self.engine.upsert(c)
                    }
                    Ok(ContainerState::Unisolable(u)) => {
                        tracing::warn!(container = %u.name, "cannot be isolated: {}", u.reason);
                        self.early.forget(id);
                        self.engine.set_unisolable(u)
                    }
                    // Only created so far (its start is under way): what was admitted early
                    // stays until Docker reports it running or gone.
                    Ok(ContainerState::Gone) if self.early.keeps(id, Instant::now()) => continue,
                    Ok(ContainerState::Gone) => self.engine.remove(id),
                    Err(e) => {
                        self.error("source", format!("cannot read container {id}: {e}"));
                        continue;
                    }
                }
            };
            merge(&mut delta, d);
        }
        let n = self.separation.changed(&self.engine, seen.iter());
        self.observer.separation_violations(n);
        if full || early_failed {
            let _ = self.full_sync().await;
            return;
        }
        if !delta.is_empty() {
            if let Err(e) = self.enforcer.apply(&delta) {
                // The tables are not what the engine thinks (deleted by hand, or a race):
                // repair with a full reconcile.
                tracing::warn!("element update failed ({e}); reconciling fully");
                let _ = self.full_sync().await;
                return;
            }
            tracing::debug!(elements = delta.len(), "applied");
        }
        if let Some(t) = batch.first {
            self.observer.enforced(t.elapsed());
        }
        if !delta.gone.is_empty() {
            self.release(&delta.gone);
            self.enforcer.cut(&delta.gone);
        }
        if !delta.regrouped.is_empty() {
            let plan = self.engine.plan();
            self.enforcer.rejudge(&plan, Some(&delta.regrouped));
        }
        self.state.containers = Some(self.engine.container_count());
        self.observer.containers(self.engine.managed_count());
        self.check_veths();
        // After the rules are live: `netguard status` reads containers and counters here.
        self.write_state();
    }

    fn release(&mut self, addrs: &BTreeSet<IpAddr>) {
        let now = Instant::now();
        self.released
            .retain(|_, t| now.duration_since(*t) < RELEASE_CUT_WINDOW);
        for a in addrs {
            self.released.insert(*a, now);
        }
    }

    /// [`gather`], admitting the early changes that come while the batch's window is open:
    /// a starting container's admission must not wait out the coalescing of other events.
    async fn gather(
        &mut self,
        first: Stamped,
        rx: &mut mpsc::Receiver<Stamped>,
        last_apply: Option<Instant>,
    ) -> Batch {
        let mut held = Delta::default();
        let mut failed = false;
        let batch = admitting(
            gather(first, rx, last_apply, self.opts.coalesce),
            early_path!(self, &mut held, &mut failed),
        )
        .await;
        self.after_early(held, failed);
        batch
    }

    /// Early changes that came while the loop was idle: admitted at once.
    fn admit_now(&mut self, e: EarlyChange) {
        let mut held = Delta::default();
        let mut failed = false;
        early_path!(self, &mut held, &mut failed).admit(e);
        self.after_early(held, failed);
    }

    /// What early admissions outside a batch leave to do: a failed apply marks the tables
    /// for a full reconcile; the addresses they took from previous holders are cut.
    fn after_early(&mut self, held: Delta, failed: bool) {
        if failed {
            self.dirty = true;
        }
        if !held.gone.is_empty() {
            self.release(&held.gone);
            self.enforcer.cut(&held.gone);
        }
        if !held.regrouped.is_empty() {
            let plan = self.engine.plan();
            self.enforcer.rejudge(&plan, Some(&held.regrouped));
        }
    }

    /// Containers admitted early that Docker never reported running: refreshed, so that
    /// Docker's answer (running, or not) decides.
    pub async fn expire_early(&mut self) {
        let ids = self.early.expired(Instant::now());
        if ids.is_empty() {
            return;
        }
        let mut batch = Batch::default();
        for id in ids {
            tracing::info!(container = %id, "admitted early, not started in time: asking Docker again");
            batch.add(Change::Container(id), Instant::now());
        }
        self.process(batch).await;
    }

    /// SIGHUP: a valid policy replaces the running one atomically; an invalid one is
    /// rejected with the same errors as `check`, and nothing changes.
    pub async fn reload(&mut self) {
        match load_policy(&self.opts.config) {
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("reload rejected: {e}");
                }
                self.state.last_error = Some(format!(
                    "reload rejected: {}",
                    errors.0.first().map(|e| e.to_string()).unwrap_or_default()
                ));
                self.observer.error("reload");
                self.write_state();
            }
            Ok(p) => {
                tracing::info!(config = %self.opts.config.display(), "reloading the policy");
                notify("RELOADING=1");
                self.engine.set_policy(p);
                let _ = self.full_sync().await;
                notify("READY=1");
            }
        }
    }

    /// Periodic: repair structure drift at the cost of a listing without set contents;
    /// re-read the inventory (missed events); every Nth time, compare the elements too.
    pub async fn resync(&mut self) {
        self.resyncs = self.resyncs.wrapping_add(1);
        if self.dirty || self.resyncs % self.opts.element_check_every.max(1) == 0 {
            let _ = self.full_sync().await;
            return;
        }
        let plan = self.engine.plan();
        match self.enforcer.structure_in_sync(&plan.ruleset) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("netguard's tables were changed outside netguard; repairing");
                let _ = self.full_sync().await;
                return;
            }
            Err(e) => {
                self.error("nft", format!("cannot read netguard's tables: {e}"));
                return;
            }
        }
        let read = self.source.inventory().await.map(|mut inv| {
            self.early.complete(&mut inv, Instant::now());
            inv
        });
        match read {
            Ok(inv) if inv != self.engine.inventory() => {
                tracing::info!("inventory changed without an event; reconciling");
                let _ = self.full_sync().await;
            }
            Ok(_) => {}
            Err(e) => self.error("source", format!("cannot read the inventory: {e}")),
        }
    }

    /// Subscribes and syncs; returns the change stream, or None if the source is down.
    pub async fn connect(&mut self) -> Option<mpsc::Receiver<Stamped>> {
        match self.source.subscribe().await {
            Ok(rx) => {
                self.early_rx = self.source.early_changes();
                self.state.connected = Some(true);
                let _ = self.full_sync().await;
                Some(rx)
            }
            Err(e) => {
                self.state.connected = Some(false);
                self.error(
                    "source",
                    format!(
                        "cannot follow {}: {e}; rules stay as they are",
                        self.source.describe()
                    ),
                );
                self.write_state();
                None
            }
        }
    }

    /// The daemon: runs until SIGTERM/SIGINT. Rules stay in place when it returns.
    pub async fn run(&mut self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => Signal::Stop("SIGTERM"),
                    _ = int.recv() => Signal::Stop("SIGINT"),
                    _ = hup.recv() => Signal::Reload,
                };
                if tx.send(sig).await.is_err() {
                    break;
                }
            }
        });
        self.serve(rx).await;
        Ok(())
    }

    /// The controller loop, driven by `signals` (the process's signals in `run`, a channel in
    /// tests). Returns on `Signal::Stop` or when the sender is gone.
    pub async fn serve(&mut self, mut signals: mpsc::Receiver<Signal>) {
        self.install_skeleton();
        // Ready means fail closed: netguard's tables are in place. Docker may not be up yet
        // (at boot netguard starts before it), so connecting comes after.
        notify(&format!(
            "READY=1\nSTATUS=default deny in place; connecting to {}",
            self.source.describe()
        ));
        let heartbeat = Arc::new(AtomicU64::new(now_ms()));
        if let Some(every) = super::notify::watchdog_interval() {
            tokio::spawn(watchdog(heartbeat.clone(), every));
        }
        let mut rx = self.connect().await;
        notify(&format!(
            "STATUS=enforcing {} containers from {}",
            self.engine.container_count(),
            self.source.describe()
        ));
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + self.opts.resync,
            self.opts.resync,
        );
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The loop proves it is alive at least this often, even when idle.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(500);
        // A deadline, not a fresh sleep per loop turn: the heartbeat tick wakes the loop every
        // second, and a sleep re-created on each turn would never reach a backoff of 1 s or more.
        let mut reconnect_at = tokio::time::Instant::now() + backoff;
        let mut last_apply: Option<Instant> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut retry_backoff = Duration::from_secs(1);
        // Failed cuts (ctnetlink) are retried on the same schedule, on their own: the
        // tables are right, only open connections are owed their cut.
        let mut cut_retry_at: Option<tokio::time::Instant> = None;
        let mut cut_backoff = Duration::from_secs(1);
        // Veths netlink failed to resolve: those containers alone are asked again.
        let mut veth_retry_at: Option<tokio::time::Instant> = None;
        let mut veth_backoff = Duration::from_secs(1);

        loop {
            heartbeat.store(now_ms(), Ordering::Relaxed);
            let connected = rx.is_some();
            let next = async {
                match rx.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // An early admission races the container's process: before anything else
                // but a signal.
                biased;
                sig = signals.recv() => match sig {
                    Some(Signal::Reload) => self.reload().await,
                    Some(Signal::Stop(why)) => { tracing::info!("{why}: exiting, rules stay in place"); break; }
                    None => break,
                },
                Some(e) = next_early(&mut self.early_rx) => self.admit_now(e),
                _ = tick.tick() => {
                    self.expire_early().await;
                    // A failed reconcile (nft refused the transaction, the source did not
                    // answer) is retried with backoff instead of waiting for the resync.
                    let now = tokio::time::Instant::now();
                    match retry_at {
                        _ if !self.dirty || !connected => retry_at = None,
                        None => retry_at = Some(now + retry_backoff),
                        Some(at) if now >= at => {
                            tracing::info!("retrying the failed reconcile");
                            let _ = self.full_sync().await;
                            retry_backoff = if self.dirty { (retry_backoff * 2).min(Duration::from_secs(30)) } else { Duration::from_secs(1) };
                            retry_at = None;
                        }
                        Some(_) => {}
                    }
                    match cut_retry_at {
                        _ if !self.check_cuts() => {
                            cut_retry_at = None;
                            cut_backoff = Duration::from_secs(1);
                        }
                        None => cut_retry_at = Some(now + cut_backoff),
                        Some(at) if now >= at => {
                            let plan = self.engine.plan();
                            self.enforcer.retry_cuts(&plan);
                            cut_backoff = if self.check_cuts() { (cut_backoff * 2).min(Duration::from_secs(30)) } else { Duration::from_secs(1) };
                            cut_retry_at = None;
                        }
                        Some(_) => {}
                    }
                    match veth_retry_at {
                        _ if self.veth_owed.is_empty() || !connected => {
                            veth_retry_at = None;
                            veth_backoff = Duration::from_secs(1);
                        }
                        None => veth_retry_at = Some(now + veth_backoff),
                        Some(at) if now >= at => {
                            tracing::info!(containers = self.veth_owed.len(), "retrying the host veths netlink could not resolve");
                            let mut batch = Batch::default();
                            for id in self.veth_owed.keys() {
                                batch.containers.insert(id.clone(), true);
                            }
                            self.refresh(batch).await;
                            veth_backoff = if self.veth_owed.is_empty() { Duration::from_secs(1) } else { (veth_backoff * 2).min(Duration::from_secs(30)) };
                            veth_retry_at = None;
                        }
                        Some(_) => {}
                    }
                }
                _ = resync.tick() => self.resync().await,
                _ = tokio::time::sleep_until(reconnect_at), if !connected => {
                    tracing::info!("reconnecting to {}", self.source.describe());
                    rx = self.connect().await;
                    backoff = if rx.is_some() { Duration::from_millis(500) } else { (backoff * 2).min(Duration::from_secs(30)) };
                    reconnect_at = tokio::time::Instant::now() + backoff;
                }
                change = next => match change {
                    None => {
                        self.state.connected = Some(false);
                        self.error("source", format!("lost {}; rules stay as they are, reconnecting", self.source.describe()));
                        self.write_state();
                        notify("STATUS=reconnecting");
                        rx = None;
                        backoff = Duration::from_millis(500);
                        reconnect_at = tokio::time::Instant::now() + backoff;
                    }
                    Some(c) => {
                        let batch = match rx.as_mut() {
                            Some(r) => self.gather(c, r, last_apply).await,
                            None => Batch::default(),
                        };
                        self.process(batch).await;
                        last_apply = Some(Instant::now());
                    }
                },
            }
        }
        notify("STOPPING=1");
        self.write_state();
    }
}

/// How long after an address left its cut (off the loop) is not taken as done.
const RELEASE_CUT_WINDOW: Duration = Duration::from_secs(5);

/// The next early change, or never when the source has none.
async fn next_early(rx: &mut Option<mpsc::Receiver<EarlyChange>>) -> Option<EarlyChange> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// What admitting an early change touches: every part of the controller but the source, so
/// that it can run while a request to the source is under way.
struct EarlyPath<'a, E: Enforcer> {
    rx: &'a mut Option<mpsc::Receiver<EarlyChange>>,
    engine: &'a mut Engine,
    early: &'a mut Early,
    enforcer: &'a mut E,
    /// The batch's changes not applied yet: applied together with the early one, in order,
    /// so that the kernel never sees them out of order.
    held: &'a mut Delta,
    /// An apply failed: the caller reconciles fully.
    failed: &'a mut bool,
    released: &'a BTreeMap<IpAddr, Instant>,
}

impl<E: Enforcer> EarlyPath<'_, E> {
    /// Admits `e` and every early change queued behind it, in one kernel transaction: in a
    /// burst of starts each transaction can wait for the commit lock (Docker's own iptables
    /// runs on nf_tables too), and the last of several queued admissions must not wait for
    /// all the transactions before it.
    fn admit(&mut self, e: EarlyChange) {
        let mut cut_before = BTreeSet::new();
        self.stage(e, &mut cut_before);
        while let Some(e) = self.rx.as_mut().and_then(|r| r.try_recv().ok()) {
            self.stage(e, &mut cut_before);
        }
        self.flush(cut_before);
    }

    /// Cuts what the staged admissions take over, then applies what they changed.
    fn flush(&mut self, cut_before: BTreeSet<IpAddr>) {
        // No connection of a previous holder of the address may be left for the new one to
        // ride on (conntrack would pass its packets as established, admitted or not). When
        // the holder was removed just now, or a moment ago (its cut off the loop may still be
        // under way), the cut is done here, before the admission: a cut after it could reach
        // the new holder's first connection, opened the moment its rules are live, and
        // delete it (its SYN-ACK then finds no connection: a 1 s retransmit). Meanwhile no
        // connection of the address can open: the old holder's veth is gone, and the new
        // one's packets are not admitted yet (held or dropped). An address that left longer
        // ago was cut then.
        if !cut_before.is_empty() {
            self.enforcer.cut_now(&cut_before);
        }
        let now = Delta {
            add: std::mem::take(&mut self.held.add),
            delete: std::mem::take(&mut self.held.delete),
            ..Delta::default()
        };
        if !now.is_empty() {
            match self.enforcer.apply(&now) {
                Ok(()) => tracing::debug!(elements = now.len(), "applied early"),
                Err(e) => {
                    tracing::warn!("early element update failed ({e}); reconciling fully");
                    *self.failed = true;
                }
            }
        }
    }

    /// The engine's side of one early change; its elements wait in `held` for [`Self::flush`].
    fn stage(&mut self, e: EarlyChange, cut: &mut BTreeSet<IpAddr>) {
        let id = match &e {
            EarlyChange::Endpoint { created, .. } | EarlyChange::Sharer { created, .. } => {
                created.id.clone()
            }
            EarlyChange::Disconnected { container, .. } => container.clone(),
        };
        // A new endpoint's addresses were just handed out by Docker: whatever else claims
        // them on that bridge is a previous holder whose removal has not been processed yet.
        let fresh: Option<(String, Option<String>, BTreeSet<IpAddr>)> = match &e {
            EarlyChange::Endpoint { endpoint, .. } => Some((
                endpoint.bridge.clone(),
                endpoint.veth.clone(),
                endpoint.addresses().collect(),
            )),
            _ => None,
        };
        // The port carrying the new endpoint's MAC must be one no admitted container holds:
        // a container with NET_ADMIN can set any MAC on its side of its veth, and admitting
        // the newcomer on that port would bind the newcomer's addresses and groups to it.
        // Left to the start, which finds the veth from the container's own namespace.
        if let EarlyChange::Endpoint {
            created, endpoint, ..
        } = &e
            && let Some(v) = &endpoint.veth
            && let Some(holder) = self.engine.port_held_by_other(&id, &endpoint.bridge, v)
        {
            tracing::warn!(
                container = %created.name,
                veth = %v,
                holder = %holder.name,
                "not admitted before its start: the port carrying its MAC is another container's"
            );
            return;
        }
        let engine = &*self.engine;
        let action = self.early.admit(
            e,
            engine.container(&id),
            |o| engine.container(o),
            Instant::now(),
        );
        let mut cut_before: Option<BTreeSet<IpAddr>> = None;
        let d = match action {
            // A network created since the last full sync: the start refresh resyncs.
            Action::Upsert(c) if !self.engine.knows_networks_of(&c) => {
                self.early.forget(&id);
                return;
            }
            Action::Upsert(c) => {
                if let Some((bridge, veth, addrs)) = &fresh {
                    for stale in self
                        .engine
                        .other_claimants(&id, bridge, veth.as_deref(), addrs)
                    {
                        tracing::info!(container = %stale, "its address was handed to a new endpoint: removed");
                        let d = self.engine.remove(&stale);
                        merge(self.held, d);
                    }
                    // Released a moment ago, and the cut of its leaving (queued to the
                    // cutter then) has not gone through yet: the connections the previous
                    // holder left may still be there. Once that cut went through, none is
                    // left and none can open (the address is in no set until this
                    // admission), so a second dump of the table would find nothing.
                    let (released, enforcer) = (self.released, &mut *self.enforcer);
                    let recent = |a: &IpAddr| {
                        released.get(a).is_some_and(|t| {
                            t.elapsed() < RELEASE_CUT_WINDOW && !enforcer.cut_since(a, *t)
                        })
                    };
                    if !self.held.gone.is_empty() || addrs.iter().any(recent) {
                        cut_before = Some(addrs.clone());
                    }
                }
                tracing::debug!(
                    container = %c.name,
                    endpoints = ?c.endpoints.iter().map(|e| (&e.network, &e.veth, e.ipv4)).collect::<Vec<_>>(),
                    "admitted before its start"
                );
                self.engine.upsert(c)
            }
            Action::Remove(id) => self.engine.remove(&id),
            Action::Nothing => return,
        };
        merge(self.held, d);
        if let Some(addrs) = cut_before {
            cut.extend(addrs);
        }
    }
}

/// Awaits `fut` (a request to the source) while admitting the early changes that come
/// meanwhile: a starting container must not wait for another container's refresh, which
/// can take hundreds of milliseconds when Docker is busy.
async fn admitting<T, E: Enforcer>(
    fut: impl std::future::Future<Output = T>,
    mut p: EarlyPath<'_, E>,
) -> T {
    tokio::pin!(fut);
    loop {
        let rx = &mut *p.rx;
        tokio::select! {
            biased;
            Some(e) = next_early(rx) => p.admit(e),
            r = &mut fut => return r,
        }
    }
}

#[cfg(test)]
mod cut_tests {
    use super::*;

    #[test]
    fn an_address_cut_since_it_was_queued_is_not_cut_again() {
        let (x, y): (IpAddr, IpAddr) = ("172.18.0.5".parse().unwrap(), "fd00::5".parse().unwrap());
        let t0 = Instant::now();
        let done = std::sync::Mutex::new(CutsDone::default());
        let queued = vec![(vec![x, y], t0)];
        assert_eq!(still_to_cut(&done, &queued), vec![x, y]);
        // Cut before it was queued (an older leaving): still cut.
        done.lock()
            .unwrap()
            .0
            .insert(x, t0 - Duration::from_millis(5));
        assert_eq!(still_to_cut(&done, &queued), vec![x, y]);
        // Cut at a new holder's admission after it was queued: not again.
        done.lock()
            .unwrap()
            .note(&[x], t0 + Duration::from_millis(1));
        assert_eq!(still_to_cut(&done, &queued), vec![y]);
        // Queued again after that cut (the new holder left too): cut.
        let later = vec![(vec![x], t0 + Duration::from_millis(2))];
        assert_eq!(still_to_cut(&done, &later), vec![x]);
    }
}
