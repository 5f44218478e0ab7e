//! The controller against a fake Docker and a fake kernel: bursts, reconnects, reloads in
//! the middle of a burst, and errors from the backend.

use super::controller::*;
use super::engine::Delta;
use super::source::{Change, Source, SourceError, Stamped};
use crate::docker::ContainerState;
use crate::inventory::{Container, Endpoint, Inventory, InventoryFileError};
use crate::loc::Loc;
use crate::nft::Changes;
use crate::plan::Plan;
use crate::plan::ruleset::{Elem, Family, Ruleset};
use crate::policy::parse_policy;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Kernel = BTreeSet<(Family, String, Elem)>;

#[derive(Default)]
struct World {
    containers: Vec<Container>,
    down: bool,
    subscribes: usize,
    /// The open event stream's sender; dropping it ends the stream as a dead dockerd would.
    stream: Option<mpsc::Sender<Stamped>>,
    inventories: usize,
    lookups: usize,
    /// The open early-change stream's sender.
    early: Option<mpsc::Sender<crate::docker::early::EarlyChange>>,
    /// netlink fails: the answers carry no veth, and say why (`netlink_failures`).
    netlink_down: bool,
    netlink_failed: Vec<crate::docker::NetlinkFailure>,
}

impl World {
    /// A container as the source answers it: without its veths while netlink is down.
    fn answer(&mut self, mut c: Container) -> Container {
        if self.netlink_down {
            for e in &mut c.endpoints {
                e.veth = None;
            }
            self.netlink_failed.push(crate::docker::NetlinkFailure {
                container_id: c.id.clone(),
                container_name: c.name.clone(),
                error: "netlink: down".into(),
            });
        }
        c
    }
}

struct FakeSource {
    world: Rc<RefCell<World>>,
}

fn down() -> SourceError {
    SourceError::File(InventoryFileError::Invalid {
        loc: Loc {
            file: PathBuf::from("docker"),
            line: 1,
            col: 1,
        },
        message: "daemon down".into(),
    })
}

impl Source for FakeSource {
    async fn inventory(&mut self) -> Result<Inventory, SourceError> {
        let mut w = self.world.borrow_mut();
        if w.down {
            return Err(down());
        }
        w.inventories += 1;
        w.netlink_failed.clear();
        let containers = w.containers.clone();
        let containers = containers.into_iter().map(|c| w.answer(c)).collect();
        let mut inv = Inventory {
            containers,
            ..Default::default()
        };
        inv.normalize();
        Ok(inv)
    }

    async fn container(&mut self, id: &str) -> Result<ContainerState, SourceError> {
        let mut w = self.world.borrow_mut();
        if w.down {
            return Err(down());
        }
        w.lookups += 1;
        w.netlink_failed.clear();
        Ok(match w.containers.iter().find(|c| c.id == id).cloned() {
            Some(c) => ContainerState::Running(w.answer(c)),
            None => ContainerState::Gone,
        })
    }

    fn netlink_failures(&mut self) -> Vec<crate::docker::NetlinkFailure> {
        std::mem::take(&mut self.world.borrow_mut().netlink_failed)
    }

    async fn subscribe(&mut self) -> Result<mpsc::Receiver<Stamped>, SourceError> {
        if self.world.borrow().down {
            return Err(down());
        }
        let (tx, rx) = mpsc::channel(10_000);
        let mut w = self.world.borrow_mut();
        w.subscribes += 1;
        w.stream = Some(tx);
        Ok(rx)
    }

    fn early_changes(&mut self) -> Option<mpsc::Receiver<crate::docker::early::EarlyChange>> {
        let (tx, rx) = mpsc::channel(100);
        self.world.borrow_mut().early = Some(tx);
        Some(rx)
    }

    async fn ping(&mut self) -> Result<(), SourceError> {
        if self.world.borrow().down {
            Err(down())
        } else {
            Ok(())
        }
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

#[derive(Default)]
struct Calls {
    kernel: Option<Kernel>,
    reconciles: usize,
    applies: usize,
    fail_next_apply: bool,
    cut: BTreeSet<IpAddr>,
    rejudged: usize,
    /// Cuts and applies, in order.
    log: Vec<String>,
    /// Conntrack fails: cuts stay owed.
    ct_down: bool,
    owed: BTreeSet<IpAddr>,
    ct_failed: u32,
    cut_retries: usize,
    /// When the last cut of each address went through (the fake's cuts are done at once).
    cut_done: BTreeMap<IpAddr, Instant>,
    /// The bridges cannot be prepared (netlink down).
    bridges_down: bool,
    bridge_attempts: usize,
}

struct FakeKernel(Rc<RefCell<Calls>>);

impl Enforcer for FakeKernel {
    async fn prepare_bridges(&mut self, _bridges: &[String]) -> Result<(), EnforceError> {
        let mut c = self.0.borrow_mut();
        c.bridge_attempts += 1;
        if c.bridges_down {
            return Err(EnforceError::Bridge("netlink: down".into()));
        }
        Ok(())
    }
    fn tables_present(&mut self) -> Result<bool, EnforceError> {
        Ok(self.0.borrow().kernel.is_some())
    }
    fn reconcile(&mut self, desired: &Ruleset) -> Result<Changes, EnforceError> {
        let mut c = self.0.borrow_mut();
        c.reconciles += 1;
        c.kernel = Some(desired.elements());
        Ok(Changes::default())
    }
    fn apply(&mut self, delta: &Delta) -> Result<(), EnforceError> {
        let mut c = self.0.borrow_mut();
        if std::mem::take(&mut c.fail_next_apply) {
            return Err(EnforceError::Bridge(
                "simulated: table deleted by hand".into(),
            ));
        }
        c.applies += 1;
        c.log.push("apply".into());
        let k = c.kernel.get_or_insert_with(Kernel::new);
        for (f, sets) in &delta.delete {
            for (s, es) in sets {
                for e in es {
                    // Like the kernel: deleting a missing element fails the transaction.
                    if !k.remove(&(*f, s.clone(), e.clone())) {
                        return Err(EnforceError::Bridge(format!("missing element {s} {e}")));
                    }
                }
            }
        }
        for (f, sets) in &delta.add {
            for (s, es) in sets {
                for e in es {
                    k.insert((*f, s.clone(), e.clone()));
                }
            }
        }
        Ok(())
    }
    fn structure_in_sync(&mut self, _desired: &Ruleset) -> Result<bool, EnforceError> {
        Ok(self.0.borrow().kernel.is_some())
    }
    fn cut(&mut self, addrs: &BTreeSet<IpAddr>) {
        let mut c = self.0.borrow_mut();
        if c.ct_down {
            c.owed.extend(addrs.iter().copied());
            c.ct_failed += 1;
            return;
        }
        c.cut.extend(addrs.iter().copied());
        let now = Instant::now();
        c.cut_done.extend(addrs.iter().map(|a| (*a, now)));
        c.log.push(format!("cut {addrs:?}"));
    }
    fn cut_since(&mut self, addr: &IpAddr, since: Instant) -> bool {
        self.0
            .borrow()
            .cut_done
            .get(addr)
            .is_some_and(|t| *t >= since)
    }
    fn cut_now(&mut self, addrs: &BTreeSet<IpAddr>) {
        let mut c = self.0.borrow_mut();
        c.cut.extend(addrs.iter().copied());
        c.log.push(format!("cut_now {addrs:?}"));
    }
    fn rejudge(&mut self, _plan: &Plan, _only: Option<&BTreeSet<IpAddr>>) {
        self.0.borrow_mut().rejudged += 1;
    }
    fn cut_status(&mut self) -> CutStatus {
        let mut c = self.0.borrow_mut();
        let owed = !c.owed.is_empty();
        CutStatus {
            failed: std::mem::take(&mut c.ct_failed),
            error: owed.then(|| "conntrack: down".into()),
            owed,
        }
    }
    fn retry_cuts(&mut self, _plan: &Plan) {
        let mut c = self.0.borrow_mut();
        c.cut_retries += 1;
        if c.ct_down {
            c.ct_failed += 1;
        } else {
            let owed = std::mem::take(&mut c.owed);
            c.cut.extend(owed);
        }
    }
}

/// Counts `errors_total` by kind.
struct Errors(Rc<RefCell<Vec<&'static str>>>);
impl Observer for Errors {
    fn error(&self, kind: &'static str) {
        self.0.borrow_mut().push(kind);
    }
}

const POLICY: &str = "[groups.web]\nmatch = { name = \"web*\" }\n[groups.api]\nmatch = { name = \"api*\" }\n\
                      [[allow]]\nfrom = \"web\"\nto = \"api\"\nports = [\"8080/tcp\"]\n";

fn container(n: u32) -> Container {
    let name = if n % 2 == 0 {
        format!("web{n}")
    } else {
        format!("api{n}")
    };
    Container {
        published: Vec::new(),
        id: format!("id{n}"),
        name,
        image: "busybox".into(),
        labels: Default::default(),
        endpoints: vec![Endpoint {
            network: "front".into(),
            network_id: None,
            bridge: "br-front".into(),
            veth: Some(format!("veth{n}")),
            ipv4: Some(Ipv4Addr::new(10, 1, (n / 250) as u8, (n % 250) as u8 + 2)),
            ipv6: None,
            mac: None,
        }],
    }
}

struct Rig {
    world: Rc<RefCell<World>>,
    calls: Rc<RefCell<Calls>>,
    ctl: Controller<FakeSource, FakeKernel>,
    policy_file: tempfile::NamedTempFile,
}

fn rig(initial: u32) -> Rig {
    let world = Rc::new(RefCell::new(World {
        containers: (0..initial).map(container).collect(),
        ..Default::default()
    }));
    let calls = Rc::new(RefCell::new(Calls::default()));
    let policy_file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(policy_file.path(), POLICY).expect("write policy");
    let mut opts = Options::new(policy_file.path().to_path_buf());
    opts.state_file = None;
    let policy = parse_policy(Path::new("p.toml"), POLICY).expect("policy");
    let ctl = Controller::new(
        opts,
        policy,
        FakeSource {
            world: world.clone(),
        },
        FakeKernel(calls.clone()),
    );
    Rig {
        world,
        calls,
        ctl,
        policy_file,
    }
}

impl Rig {
    /// The kernel holds exactly what the full plan of the world says.
    fn assert_converged(&self) {
        let mut inv = Inventory {
            containers: self.world.borrow().containers.clone(),
            ..Default::default()
        };
        inv.normalize();
        let want = crate::plan::plan(self.ctl.engine.policy(), &inv)
            .ruleset
            .elements();
        let have = self.calls.borrow().kernel.clone().unwrap_or_default();
        let strip = |k: &Kernel| -> Kernel {
            k.iter()
                .filter(|x| x.1 != "bridges" && x.1 != "unmanaged")
                .cloned()
                .collect()
        };
        assert_eq!(strip(&have), strip(&want));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn start_installs_skeleton_then_reconciles_once() {
    let mut r = rig(10);
    r.ctl.install_skeleton();
    assert_eq!(
        r.calls.borrow().reconciles,
        1,
        "default-deny tables before the inventory"
    );
    assert!(r.ctl.connect().await.is_some());
    assert_eq!(r.calls.borrow().reconciles, 2);
    r.assert_converged();
    // A restart finds the tables present and does not touch them before reconciling.
    r.ctl.install_skeleton();
    assert_eq!(r.calls.borrow().reconciles, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_500_changes_is_one_transaction() {
    // Two containers make the network known; 500 more join it in one burst.
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let (base, reconciles) = (r.calls.borrow().applies, r.calls.borrow().reconciles);
    let mut batch = Batch::default();
    for n in 2..502 {
        r.world.borrow_mut().containers.push(container(n));
        batch.add(Change::Container(format!("id{n}")), Instant::now());
    }
    r.ctl.process(batch).await;
    assert_eq!(r.calls.borrow().applies - base, 1);
    assert_eq!(
        r.calls.borrow().reconciles,
        reconciles,
        "no full reconcile for known networks"
    );
    assert_eq!(r.world.borrow().lookups, 500);
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn gather_applies_the_first_change_at_once_and_coalesces_the_rest() {
    let (tx, mut rx) = mpsc::channel(1000);
    // Nothing applied recently: no wait at all.
    let t = Instant::now();
    let b = gather(
        (Change::Networks, Instant::now()),
        &mut rx,
        None,
        Duration::from_millis(50),
    )
    .await;
    assert!(t.elapsed() < Duration::from_millis(20) && b.networks);
    // A burst behind a fresh apply: waits out the window, then takes everything queued.
    let producer = tokio::spawn(async move {
        for n in 0..500 {
            let _ = tx
                .send((Change::Container(format!("id{n}")), Instant::now()))
                .await;
        }
    });
    let mut batches = 0;
    let mut seen = 0;
    let mut last = Some(Instant::now());
    while seen < 500 {
        let Some(first) = rx.recv().await else { break };
        let b = gather(first, &mut rx, last, Duration::from_millis(20)).await;
        seen += b.containers.len();
        batches += 1;
        last = Some(Instant::now());
    }
    let _ = producer.await;
    assert_eq!(seen, 500);
    assert!(batches < 10, "{batches} batches for 500 changes");
}

/// The coalescing window ending between gather's reading of the clock and its sleep must
/// not panic: it subtracted a second `elapsed()` from the window after comparing the first
/// (found by the soak: `netguard run` died with "overflow when subtracting durations").
/// Last applies placed a few hundred nanoseconds either side of the window's end make that
/// race all but certain over the sweep; the paused clock keeps the sleeps instant.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gather_survives_the_window_ending_while_it_reads_the_clock() {
    let (_tx, mut rx) = mpsc::channel::<Stamped>(1);
    let coalesce = Duration::from_micros(50);
    for k in 0..20_000u64 {
        let Some(last) = Instant::now().checked_sub(coalesce - Duration::from_nanos(k % 5_000))
        else {
            continue;
        };
        let b = gather(
            (Change::Networks, Instant::now()),
            &mut rx,
            Some(last),
            coalesce,
        )
        .await;
        assert!(b.networks);
    }
}

/// Event → enforced starts when the source received the change, not when the controller
/// got round to it: a change that waited in the queue carries its waiting time.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_is_timed_from_when_its_first_change_was_received() {
    let (tx, mut rx) = mpsc::channel(10);
    let received = Instant::now();
    tx.send((
        Change::Container("id2".into()),
        received + Duration::from_millis(1),
    ))
    .await
    .expect("open");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = gather(
        (Change::Container("id1".into()), received),
        &mut rx,
        None,
        Duration::ZERO,
    )
    .await;
    assert_eq!(b.first, Some(received));
    assert_eq!(b.containers.len(), 2);
    assert!(
        b.first
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(30))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stop_and_start_within_one_batch_nets_out() {
    let mut r = rig(4);
    let _rx = r.ctl.connect().await;
    let mut b = Batch::default();
    b.add(Change::Container("id1".into()), Instant::now());
    b.add(Change::Gone("id1".into()), Instant::now());
    r.world.borrow_mut().containers.retain(|c| c.id != "id1");
    r.ctl.process(b).await;
    r.assert_converged();
    assert!(
        r.calls
            .borrow()
            .cut
            .contains(&"10.1.0.3".parse::<IpAddr>().expect("ip"))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn docker_down_keeps_the_rules_and_reconnect_resyncs() {
    let mut r = rig(6);
    let _rx = r.ctl.connect().await;
    let before = r.calls.borrow().kernel.clone();
    r.world.borrow_mut().down = true;
    // While down: connect fails, nothing is written to the kernel.
    assert!(r.ctl.connect().await.is_none());
    assert_eq!(r.calls.borrow().kernel, before);
    // Changes happen while down; on reconnect a full sync picks them up.
    {
        let mut w = r.world.borrow_mut();
        w.down = false;
        w.containers.remove(0);
        w.containers.push(container(40));
    }
    let reconciles = r.calls.borrow().reconciles;
    assert!(r.ctl.connect().await.is_some());
    assert_eq!(r.calls.borrow().reconciles, reconciles + 1);
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn reload_during_a_burst_applies_the_new_policy_and_a_bad_one_changes_nothing() {
    let mut r = rig(10);
    let _rx = r.ctl.connect().await;
    let mut b = Batch::default();
    for n in 10..20 {
        r.world.borrow_mut().containers.push(container(n));
        b.add(Change::Container(format!("id{n}")), Instant::now());
    }
    r.ctl.process(b).await;
    // A broken policy: rejected, kernel untouched, error recorded.
    std::fs::write(r.policy_file.path(), "[groups.web]\nmatch = {}\n").expect("write");
    let before = (r.calls.borrow().kernel.clone(), r.calls.borrow().reconciles);
    r.ctl.reload().await;
    assert_eq!(
        (r.calls.borrow().kernel.clone(), r.calls.borrow().reconciles),
        before
    );
    assert!(
        r.ctl
            .state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("reload rejected"))
    );
    // A valid one (api no longer a group): one atomic reconcile to the new plan, connections
    // judged again.
    std::fs::write(
        r.policy_file.path(),
        "[groups.web]\nmatch = { name = \"web*\" }\n",
    )
    .expect("write");
    let rejudged = r.calls.borrow().rejudged;
    r.ctl.reload().await;
    assert_eq!(r.calls.borrow().reconciles, before.1 + 1);
    assert_eq!(r.calls.borrow().rejudged, rejudged + 1);
    r.assert_converged();
    // More changes after the reload keep the kernel right.
    let mut b = Batch::default();
    r.world.borrow_mut().containers.retain(|c| c.id != "id12");
    b.add(Change::Gone("id12".into()), Instant::now());
    r.ctl.process(b).await;
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_element_update_falls_back_to_a_full_reconcile() {
    let mut r = rig(4);
    let _rx = r.ctl.connect().await;
    r.calls.borrow_mut().fail_next_apply = true;
    r.world.borrow_mut().containers.push(container(9));
    let reconciles = r.calls.borrow().reconciles;
    let mut b = Batch::default();
    b.add(Change::Container("id9".into()), Instant::now());
    r.ctl.process(b).await;
    assert_eq!(r.calls.borrow().reconciles, reconciles + 1);
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn resync_repairs_missing_tables_and_missed_events() {
    let mut r = rig(4);
    let _rx = r.ctl.connect().await;
    // Someone deleted the tables.
    r.calls.borrow_mut().kernel = None;
    r.ctl.resync().await;
    r.assert_converged();
    // An event was missed: the resync's inventory comparison catches it.
    r.world.borrow_mut().containers.push(container(30));
    r.ctl.resync().await;
    r.assert_converged();
}

/// The loop keeps retrying with a growing backoff while it also wakes every second for the
/// heartbeat: a retry timer re-created on each wake-up would never fire once the backoff
/// reached a second (the dockerd-restart failure this guards against).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn serve_reconnects_after_a_long_outage_despite_the_heartbeat() {
    let mut r = rig(4);
    r.world.borrow_mut().down = true;
    let world = r.world.clone();
    let (tx, rx) = mpsc::channel(4);
    let driver = async move {
        // Down for 20 s: retries at 0.5, 1.5, 3.5, 7.5, 15.5 s all fail, the next is at 31.5 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(world.borrow().subscribes, 0);
        world.borrow_mut().down = false;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(world.borrow().subscribes, 0, "backoff is still running");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = world.borrow().subscribes;
        tx.send(Signal::Stop("test")).await.expect("loop alive");
        connected
    };
    let ((), connected) = tokio::join!(r.ctl.serve(rx), driver);
    assert_eq!(connected, 1, "reconnected once Docker was back");
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn serve_reconnects_quickly_after_a_lost_stream() {
    let mut r = rig(3);
    let world = r.world.clone();
    let (tx, rx) = mpsc::channel(4);
    let driver = async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(world.borrow().subscribes, 1);
        // dockerd goes away for 2.2 s: the stream ends, retries at +0.5 and +1.5 fail.
        {
            let mut w = world.borrow_mut();
            w.down = true;
            w.stream = None;
            w.containers.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(2200)).await;
        world.borrow_mut().down = false;
        world.borrow_mut().containers.push(container(50));
        // The next retry is at +3.5 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let n = world.borrow().subscribes;
        tx.send(Signal::Stop("test")).await.expect("loop alive");
        n
    };
    let ((), n) = tokio::join!(r.ctl.serve(rx), driver);
    assert_eq!(n, 2);
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_sharing_a_netns_follows_its_owner() {
    // `web-side` runs with `--network container:id1`: Docker reports id1's endpoints for it
    // and sends events only for id1.
    let mut r = rig(4);
    let mut side = container(1);
    side.id = "side".into();
    side.name = "web-side".into();
    r.world.borrow_mut().containers.push(side);
    let _rx = r.ctl.connect().await;
    r.assert_converged();

    // id1 is reconnected: new veth and address, for both.
    {
        let mut w = r.world.borrow_mut();
        for c in w
            .containers
            .iter_mut()
            .filter(|c| c.id == "id1" || c.id == "side")
        {
            c.endpoints[0].veth = Some("veth1b".into());
            c.endpoints[0].ipv4 = Some(Ipv4Addr::new(10, 1, 0, 99));
        }
    }
    let lookups = r.world.borrow().lookups;
    let mut b = Batch::default();
    b.add(Change::Container("id1".into()), Instant::now());
    r.ctl.process(b).await;
    assert_eq!(r.world.borrow().lookups - lookups, 2, "id1 and its sharer");
    r.assert_converged();
    let inv = r.ctl.engine.inventory();
    let ep = &inv.find("web-side").expect("sharer kept").endpoints[0];
    assert_eq!(ep.veth.as_deref(), Some("veth1b"));

    // id1 dies: the sharer has no network left and Docker no longer lists it as isolable.
    r.world
        .borrow_mut()
        .containers
        .retain(|c| c.id != "id1" && c.id != "side");
    let mut b = Batch::default();
    b.add(Change::Gone("id1".into()), Instant::now());
    r.ctl.process(b).await;
    r.assert_converged();
    assert!(r.ctl.engine.inventory().find("web-side").is_none());
    assert!(
        r.calls
            .borrow()
            .cut
            .contains(&"10.1.0.99".parse::<IpAddr>().expect("ip"))
    );
}

/// An early change for container `n` (as the Docker source would send it at the connect).
fn early_endpoint(n: u32, event_at: Instant) -> crate::docker::early::EarlyChange {
    let c = container(n);
    crate::docker::early::EarlyChange::Endpoint {
        created: crate::docker::early::Created {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            labels: c.labels.clone(),
            network_mode: "front".into(),
        },
        endpoint: c.endpoints[0].clone(),
        event_at,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_starting_container_is_admitted_early_kept_while_created_and_removed_at_its_die() {
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let early = r.world.borrow().early.clone().expect("early stream");
    // The connect: its early change, and the refresh it causes, which finds the container
    // only created (not listed as running).
    let connect_at = Instant::now();
    early.send(early_endpoint(4, connect_at)).await.unwrap();
    let mut b = Batch::default();
    b.add(Change::Container("id4".into()), connect_at);
    r.ctl.process(b).await;
    assert!(r.ctl.early.is_pending("id4"));
    // The kernel holds it as if it ran: what its start will confirm.
    r.world.borrow_mut().containers.push(container(4));
    r.assert_converged();
    let mut b = Batch::default();
    b.add(Change::Container("id4".into()), Instant::now());
    r.ctl.process(b).await;
    assert!(
        !r.ctl.early.is_pending("id4"),
        "the start refresh confirms it"
    );
    r.assert_converged();

    // It dies; an early change from before the die, however late, admits nothing.
    let before_die = Instant::now();
    r.world.borrow_mut().containers.retain(|c| c.id != "id4");
    let mut b = Batch::default();
    b.add(Change::Gone("id4".into()), Instant::now());
    r.ctl.process(b).await;
    r.assert_converged();
    early.send(early_endpoint(4, before_die)).await.unwrap();
    let mut b = Batch::default();
    b.add(Change::Container("id4".into()), Instant::now());
    r.ctl.process(b).await;
    assert!(!r.ctl.early.is_pending("id4"));
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_sync_keeps_a_starting_container_admitted_early() {
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let early = r.world.borrow().early.clone().expect("early stream");
    early.send(early_endpoint(6, Instant::now())).await.unwrap();
    let mut b = Batch::default();
    b.add(Change::Container("id6".into()), Instant::now());
    r.ctl.process(b).await;
    // A network change resyncs fully while it starts: the source does not list it yet.
    let mut b = Batch::default();
    b.add(Change::Networks, Instant::now());
    r.ctl.process(b).await;
    r.world.borrow_mut().containers.push(container(6));
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn an_address_handed_to_a_new_endpoint_leaves_its_previous_holder_and_its_connections() {
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let early = r.world.borrow().early.clone().expect("early stream");
    // id1 died and Docker gave its address to a new container; the die is not processed yet
    // when the new container's connect is (the early stream does not queue behind it).
    let old = container(1).endpoints[0].ipv4.expect("address");
    let mut change = early_endpoint(7, Instant::now());
    if let crate::docker::early::EarlyChange::Endpoint { endpoint, .. } = &mut change {
        endpoint.ipv4 = Some(old);
    }
    early.send(change).await.unwrap();
    r.calls.borrow_mut().log.clear();
    let mut b = Batch::default();
    b.add(Change::Container("id7".into()), Instant::now());
    r.ctl.process(b).await;
    assert!(
        r.ctl.engine.container("id1").is_none(),
        "the previous holder goes"
    );
    assert!(r.ctl.engine.container("id7").is_some());
    let log = r.calls.borrow().log.clone();
    // Right before the admission, on the loop (not queued behind the batch's end): a cut
    // after it could delete the new holder's first connection.
    assert_eq!(
        log.get(..2),
        Some(&[format!("cut_now {{{old}}}"), "apply".to_string()][..]),
        "its connections are cut as the new holder is admitted: {log:?}"
    );
    // The kernel holds the new holder only, as a plan of that world would.
    let mut c7 = container(7);
    c7.endpoints[0].ipv4 = Some(old);
    r.world.borrow_mut().containers = vec![container(0), c7];
    r.assert_converged();
}

#[tokio::test(flavor = "current_thread")]
async fn an_address_whose_cut_went_through_is_not_cut_again_for_its_next_holder() {
    // Back-to-back `docker run --rm`: the first one's die is processed (removed, its
    // connections cut), then the next container gets the same address.
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let early = r.world.borrow().early.clone().expect("early stream");
    let old = container(1).endpoints[0].ipv4.expect("address");
    r.world.borrow_mut().containers.retain(|c| c.id != "id1");
    let mut b = Batch::default();
    b.add(Change::Gone("id1".into()), Instant::now());
    r.ctl.process(b).await;
    let same_address = |n: u32| {
        let mut change = early_endpoint(n, Instant::now());
        if let crate::docker::early::EarlyChange::Endpoint { endpoint, .. } = &mut change {
            endpoint.ipv4 = Some(old);
        }
        change
    };
    early.send(same_address(7)).await.unwrap();
    r.calls.borrow_mut().log.clear();
    let mut b = Batch::default();
    b.add(Change::Container("id7".into()), Instant::now());
    r.ctl.process(b).await;
    assert!(r.ctl.engine.container("id7").is_some());
    let log = r.calls.borrow().log.clone();
    assert_eq!(
        log,
        vec!["apply".to_string()],
        "the cut at the die went through: no second one at the admission"
    );

    // The cut of a leaving that did not go through (conntrack down) is still owed: the
    // next holder's admission cuts first.
    r.calls.borrow_mut().ct_down = true;
    r.world.borrow_mut().containers.retain(|c| c.id != "id7");
    let mut b = Batch::default();
    b.add(Change::Gone("id7".into()), Instant::now());
    r.ctl.process(b).await;
    r.calls.borrow_mut().ct_down = false;
    early.send(same_address(9)).await.unwrap();
    r.calls.borrow_mut().log.clear();
    let mut b = Batch::default();
    b.add(Change::Container("id9".into()), Instant::now());
    r.ctl.process(b).await;
    let log = r.calls.borrow().log.clone();
    assert_eq!(
        log.get(..2),
        Some(&[format!("cut_now {{{old}}}"), "apply".to_string()][..]),
        "its leaving's cut failed: cut before the new holder's first packet: {log:?}"
    );
}

/// The gauge a metrics observer would export.
struct SeparationGauge(Rc<std::cell::Cell<Option<usize>>>);
impl Observer for SeparationGauge {
    fn separation_violations(&self, n: usize) {
        self.0.set(Some(n));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn separation_violations_follow_events_and_reloads() {
    let mut r = rig(2);
    let separated = format!("{POLICY}[[separate]]\ngroups = [\"web\", \"api\"]\n");
    std::fs::write(r.policy_file.path(), &separated).expect("write");
    let gauge = Rc::new(std::cell::Cell::new(None));
    r.ctl.observer = Box::new(SeparationGauge(gauge.clone()));
    r.ctl.reload().await;
    assert_eq!(gauge.get(), Some(1), "web0 and api1");
    // api3 and web4 start: 2 web × 2 api.
    let mut b = Batch::default();
    for n in [3, 4] {
        r.world.borrow_mut().containers.push(container(n));
        b.add(Change::Container(format!("id{n}")), Instant::now());
    }
    r.ctl.process(b).await;
    assert_eq!(gauge.get(), Some(4));
    // web0 goes: 1 web × 2 api.
    r.world.borrow_mut().containers.retain(|c| c.id != "id0");
    let mut b = Batch::default();
    b.add(Change::Gone("id0".into()), Instant::now());
    r.ctl.process(b).await;
    assert_eq!(gauge.get(), Some(2));
    // Without the line, nothing is counted.
    std::fs::write(r.policy_file.path(), POLICY).expect("write");
    r.ctl.reload().await;
    assert_eq!(gauge.get(), Some(0));
}

/// A cut that fails (conntrack down, the rules fine) is counted, stands in `last_error` across
/// reconciles that succeed, and is retried on its own with backoff (not every second, no
/// signal needed) until it succeeds; then the error clears.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_cut_stands_in_last_error_and_is_retried_with_backoff_until_done() {
    let mut r = rig(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    r.ctl.opts.state_file = Some(state.clone());
    let errors = Rc::new(RefCell::new(Vec::new()));
    r.ctl.observer = Box::new(Errors(errors.clone()));
    let (world, calls) = (r.world.clone(), r.calls.clone());
    let gone: IpAddr = Ipv4Addr::new(10, 1, 0, 2).into();
    let last_error = || {
        crate::state::read(&state)
            .expect("state")
            .and_then(|s| s.last_error)
    };
    let conntrack = || {
        errors
            .borrow()
            .iter()
            .filter(|k| **k == "conntrack")
            .count()
    };
    let (tx, rx) = mpsc::channel(4);
    let driver = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        calls.borrow_mut().ct_down = true;
        world.borrow_mut().containers.remove(0);
        tx.send(Signal::Reload).await.expect("loop alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = last_error().unwrap_or_default();
        assert!(
            e.contains("cannot cut open connections") && e.contains("conntrack: down"),
            "{e}"
        );
        assert_eq!(conntrack(), 1);
        assert!(calls.borrow().owed.contains(&gone));
        // A reconcile that succeeds meanwhile does not hide the owed cut.
        tokio::time::sleep(Duration::from_secs(6)).await;
        tx.send(Signal::Reload).await.expect("loop alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(last_error().is_some_and(|e| e.contains("cannot cut")));
        tokio::time::sleep(Duration::from_secs(6)).await;
        // 12 s down: retried, with backoff (1, 2, 4 s...), not every second.
        let retries = calls.borrow().cut_retries;
        assert!((2..=4).contains(&retries), "{retries} retries");
        assert_eq!(conntrack(), 1 + retries, "every failed retry counted");
        assert!(!calls.borrow().cut.contains(&gone));
        calls.borrow_mut().ct_down = false;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            calls.borrow().cut.contains(&gone),
            "the owed cut was not retried"
        );
        assert!(calls.borrow().owed.is_empty());
        assert_eq!(last_error(), None);
        let (retries, failed) = (calls.borrow().cut_retries, conntrack());
        assert_eq!(
            failed, retries,
            "the last retry succeeded and was not counted"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            calls.borrow().cut_retries,
            retries,
            "retrying with nothing owed"
        );
        tx.send(Signal::Stop("test")).await.expect("loop alive");
    };
    tokio::join!(r.ctl.serve(rx), driver);
}

/// Bridges that cannot be prepared (netlink down) do not hold the rules back: the reconcile
/// goes in, yet the error stands in `last_error` and the sync is retried with backoff until
/// the bridges are ready; then it clears.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bridges_not_ready_stand_in_last_error_and_the_sync_is_retried() {
    let mut r = rig(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    r.ctl.opts.state_file = Some(state.clone());
    let errors = Rc::new(RefCell::new(Vec::new()));
    r.ctl.observer = Box::new(Errors(errors.clone()));
    let (world, calls) = (r.world.clone(), r.calls.clone());
    let read = || {
        crate::state::read(&state)
            .expect("state")
            .expect("a state file")
    };
    let (tx, rx) = mpsc::channel(4);
    let driver = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reconciles = calls.borrow().reconciles;
        calls.borrow_mut().bridges_down = true;
        world.borrow_mut().containers.remove(0);
        tx.send(Signal::Reload).await.expect("loop alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = read();
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("cannot prepare the managed bridges: netlink: down")),
            "{st:?}"
        );
        assert_eq!(
            calls.borrow().reconciles,
            reconciles + 1,
            "the rules went in"
        );
        let attempts = calls.borrow().bridge_attempts;
        tokio::time::sleep(Duration::from_secs(12)).await;
        let retried = calls.borrow().bridge_attempts - attempts;
        assert!((2..=4).contains(&retried), "{retried} retries in 12 s");
        assert!(read().last_error.is_some());
        calls.borrow_mut().bridges_down = false;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(read().last_error, None);
        let n = errors.borrow().iter().filter(|k| **k == "bridge").count();
        assert_eq!(n, 1 + retried, "every failed attempt counted");
        let attempts = calls.borrow().bridge_attempts;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            calls.borrow().bridge_attempts,
            attempts,
            "retrying when ready"
        );
        tx.send(Signal::Stop("test")).await.expect("loop alive");
    };
    tokio::join!(r.ctl.serve(rx), driver);
    r.assert_converged();
}

/// A veth netlink cannot resolve (the Docker path's rtnetlink failing): the new container is
/// not admitted, the others keep their veths (across a reload too), the failure is counted
/// and stands in `last_error`, and the container alone is asked again with backoff until
/// netlink answers; then it is admitted and the error clears.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_veth_netlink_cannot_resolve_keeps_the_container_out_and_is_retried_with_backoff() {
    let mut r = rig(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    r.ctl.opts.state_file = Some(state.clone());
    let errors = Rc::new(RefCell::new(Vec::new()));
    r.ctl.observer = Box::new(Errors(errors.clone()));
    let (world, calls) = (r.world.clone(), r.calls.clone());
    let last_error = || {
        crate::state::read(&state)
            .expect("state")
            .and_then(|s| s.last_error)
    };
    let veth_errors = || errors.borrow().iter().filter(|k| **k == "veth").count();
    let kernel = || format!("{:?}", calls.borrow().kernel);
    let new_ip = "10.1.0.6";
    let (tx, rx) = mpsc::channel(4);
    let driver = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(kernel().contains("veth0") && kernel().contains("10.1.0.2"));
        world.borrow_mut().netlink_down = true;
        world.borrow_mut().containers.push(container(4));
        let stream = world.borrow().stream.clone().expect("subscribed");
        stream
            .send((Change::Container("id4".into()), Instant::now()))
            .await
            .expect("loop alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = last_error().unwrap_or_default();
        assert!(
            e.starts_with("cannot resolve the host veth of web4: netlink: down"),
            "{e}"
        );
        assert_eq!(veth_errors(), 1);
        assert!(!kernel().contains(new_ip), "admitted without its veth");
        // A full sync meanwhile: the known containers keep their veths, id4 stays out.
        tx.send(Signal::Reload).await.expect("loop alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Netlink fails for every container the reload reads: each one counted.
        assert_eq!(veth_errors(), 1 + 5, "the reload's read counted");
        assert!(kernel().contains("veth0") && kernel().contains("10.1.0.2"));
        assert!(!kernel().contains(new_ip));
        assert!(last_error().is_some_and(|e| e.contains("host veth of web4")));
        let lookups = world.borrow().lookups;
        tokio::time::sleep(Duration::from_secs(12)).await;
        // Retried with backoff (1, 2, 4 s...), not every second: each retry refreshes the
        // five containers the reload could not resolve, the four known ones keeping their veth.
        let looked_up = world.borrow().lookups - lookups;
        assert_eq!(looked_up % 5, 0, "{looked_up} lookups");
        let retries = looked_up / 5;
        assert!((2..=4).contains(&retries), "{retries} retries in 12 s");
        assert_eq!(veth_errors(), 6 + 5 * retries, "every failed retry counted");
        assert!(kernel().contains("veth0") && kernel().contains("10.1.0.2"));
        assert!(!kernel().contains(new_ip));
        world.borrow_mut().netlink_down = false;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            kernel().contains(new_ip),
            "not admitted once netlink answers"
        );
        assert_eq!(last_error(), None);
        let (lookups, counted) = (world.borrow().lookups, veth_errors());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            world.borrow().lookups,
            lookups,
            "retrying with nothing owed"
        );
        assert_eq!(veth_errors(), counted);
        tx.send(Signal::Stop("test")).await.expect("loop alive");
    };
    tokio::join!(r.ctl.serve(rx), driver);
    r.assert_converged();
}

/// A container that set a newcomer's MAC on its own interface (NET_ADMIN allows it) makes the
/// early finder see the newcomer's MAC behind its port: the newcomer is not admitted there
/// (that would bind its address and groups to the thief's port); its start admits it on its
/// own veth, and the holder keeps only what it had.
#[tokio::test(flavor = "current_thread")]
async fn an_early_endpoint_on_a_port_another_container_holds_is_not_admitted() {
    let mut r = rig(2);
    let _rx = r.ctl.connect().await;
    let early = r.world.borrow().early.clone().expect("early stream");
    let mut change = early_endpoint(4, Instant::now());
    if let crate::docker::early::EarlyChange::Endpoint { endpoint, .. } = &mut change {
        endpoint.veth = Some("veth1".into());
    }
    early.send(change).await.unwrap();
    let mut b = Batch::default();
    b.add(Change::Container("id4".into()), Instant::now());
    r.ctl.process(b).await;
    assert!(
        r.ctl.engine.container("id4").is_none(),
        "not admitted on api1's port"
    );
    assert_eq!(
        r.ctl.engine.container("id1").map(|c| c.endpoints.clone()),
        Some(container(1).endpoints),
        "the holder keeps its own endpoint"
    );
    r.assert_converged();
    // Its start: the source reports it on its own veth.
    r.world.borrow_mut().containers.push(container(4));
    let mut b = Batch::default();
    b.add(Change::Container("id4".into()), Instant::now());
    r.ctl.process(b).await;
    assert_eq!(
        r.ctl
            .engine
            .container("id4")
            .and_then(|c| c.endpoints[0].veth.clone()),
        Some("veth4".into())
    );
    r.assert_converged();
}
