//! Holding the first packets of a container that is not admitted yet.
//!
//! A container's process can send before its admission is committed (Docker starts it tens
//! of milliseconds after its endpoint is configured, and the daemon competes for the CPU
//! with that start). The `hold` chain (`plan::inet`) queues such packets instead of
//! dropping them; this thread keeps each one until the kernel holds an admission that
//! covers it, then has the kernel judge it again with the rules live by then
//! (`NF_REPEAT`), or drops it after `HOLD_MS`. It never accepts a packet itself.
//!
//! What "covers" means replays what the bridge table checked when the packet entered,
//! because that check ran before the admission and let the packet through as coming from
//! an unmanaged port: the packet must come from the veth its source address is now bound
//! to, with that endpoint's MAC when its MAC is bound. A neighbour that sent with a
//! newcomer's address before the newcomer was admitted is therefore never released.
//!
//! The bindings mirror what the kernel holds: rebuilt from each committed full ruleset,
//! updated by each committed element delta (`Kernel`, in `controller.rs`).

use super::engine::Delta;
use crate::inventory::Mac;
use crate::nfqueue::{Packet, Queue, QueueVerdict};
use crate::plan::names;
use crate::plan::ruleset::{Elem, Family, Ruleset};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Summaries of what the hold did are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// At most this many packets held at once (the kernel's queue is as long); more are dropped.
pub const MAX_HELD: usize = 1024;

/// The kernel's sets the release decision reads, as committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bindings {
    /// `all_4` / `all_6`: (bridge, address) of every admitted endpoint.
    all: HashSet<(String, IpAddr)>,
    /// `bind_4` / `bind_6`: (veth, address).
    bind: HashSet<(String, IpAddr)>,
    /// `genuine_4` / `genuine_6`: (veth, MAC, address).
    genuine: HashSet<(String, Mac, IpAddr)>,
    /// `mac_veths`: veths whose frames must come from their endpoint's MAC.
    mac_veths: HashSet<String>,
}

impl Bindings {
    pub fn of(rs: &Ruleset) -> Bindings {
        let mut b = Bindings::default();
        for (family, set, e) in rs.elements() {
            b.put(family, &set, &e, true);
        }
        b
    }

    pub fn apply(&mut self, d: &Delta) {
        for (on, side) in [(false, &d.delete), (true, &d.add)] {
            for (family, sets) in side {
                for (set, elems) in sets {
                    for e in elems {
                        self.put(*family, set, e, on);
                    }
                }
            }
        }
    }

    fn put(&mut self, family: Family, set: &str, e: &Elem, on: bool) {
        fn edit<T: std::hash::Hash + Eq>(s: &mut HashSet<T>, v: T, on: bool) {
            if on {
                s.insert(v);
            } else {
                s.remove(&v);
            }
        }
        match (family, set, e) {
            (Family::Inet, names::ALL_4, Elem::IfnameV4(b, a)) => {
                edit(&mut self.all, (b.clone(), IpAddr::V4(*a)), on)
            }
            (Family::Inet, names::ALL_6, Elem::IfnameV6(b, a)) => {
                edit(&mut self.all, (b.clone(), IpAddr::V6(*a)), on)
            }
            (Family::Bridge, names::BIND_4, Elem::IfnameV4(v, a)) => {
                edit(&mut self.bind, (v.clone(), IpAddr::V4(*a)), on)
            }
            (Family::Bridge, names::BIND_6, Elem::IfnameV6(v, a)) => {
                edit(&mut self.bind, (v.clone(), IpAddr::V6(*a)), on)
            }
            (Family::Bridge, names::GENUINE_4, Elem::IfnameMacV4(v, m, a)) => {
                edit(&mut self.genuine, (v.clone(), *m, IpAddr::V4(*a)), on)
            }
            (Family::Bridge, names::GENUINE_6, Elem::IfnameMacV6(v, m, a)) => {
                edit(&mut self.genuine, (v.clone(), *m, IpAddr::V6(*a)), on)
            }
            (Family::Bridge, names::MAC_VETHS, Elem::Ifname(v)) => {
                edit(&mut self.mac_veths, v.clone(), on)
            }
            _ => {}
        }
    }

    /// Whether the kernel, judging `p` again now, would no longer hold it, and `p` did come
    /// from where its source address is bound.
    pub fn releases(&self, p: &Named) -> bool {
        let (Some(s), Some(d), Some(bin), Some(bout), Some(port)) =
            (p.saddr, p.daddr, &p.bridge_in, &p.bridge_out, &p.port_in)
        else {
            return false;
        };
        let from_its_port = match p.src_mac {
            Some(m) if self.genuine.contains(&(port.clone(), m, s)) => true,
            _ => !self.mac_veths.contains(port) && self.bind.contains(&(port.clone(), s)),
        };
        from_its_port
            && self.all.contains(&(bin.clone(), s))
            && self.all.contains(&(bout.clone(), d))
    }
}

/// A queued packet with its interfaces named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub id: u32,
    pub bridge_in: Option<String>,
    pub bridge_out: Option<String>,
    pub port_in: Option<String>,
    pub src_mac: Option<Mac>,
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
}

impl Named {
    pub fn of(p: &Packet, name: impl Fn(u32) -> Option<String>) -> Named {
        Named {
            id: p.id,
            bridge_in: p.indev.and_then(&name),
            bridge_out: p.outdev.and_then(&name),
            port_in: p.physindev.and_then(&name),
            src_mac: p.src_mac.map(Mac),
            saddr: p.saddr,
            daddr: p.daddr,
        }
    }
}

/// The held packets in arrival order, and what to tell the kernel about them. Pure: the
/// thread feeds it packets, bindings and the time.
#[derive(Debug, Default)]
pub struct Held {
    q: VecDeque<(Instant, Named)>,
    /// Flows (source, destination, port) released within the last `hold`: when, and how
    /// many of their packets came back after that. The kernel has the admission once a
    /// flow is released, so a packet of it queued afterwards means the kernel and the
    /// mirror disagree; after a few it is dropped rather than sent round again.
    released: HashMap<Flow, (Instant, u32)>,
}

/// (source, destination, the port it came from).
type Flow = (Option<IpAddr>, Option<IpAddr>, Option<String>);

/// How many packets of a released flow may come back and be released again.
const MAX_REQUEUES: u32 = 8;

impl Held {
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Takes a new packet; a verdict at once when there is no room.
    pub fn push(&mut self, now: Instant, p: Named) -> Option<(u32, QueueVerdict)> {
        if self.q.len() >= MAX_HELD {
            return Some((p.id, QueueVerdict::Drop));
        }
        self.q.push_back((now, p));
        None
    }

    /// The verdicts due now: released packets, and those held longer than `hold`.
    pub fn due(&mut self, now: Instant, hold: Duration, b: &Bindings) -> Vec<(u32, QueueVerdict)> {
        self.released
            .retain(|_, (t, _)| now.saturating_duration_since(*t) < hold);
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.q.len());
        for (t, p) in self.q.drain(..) {
            if b.releases(&p) {
                let key = (p.saddr, p.daddr, p.port_in.clone());
                let e = self.released.entry(key).or_insert((now, 0));
                if t > e.0 {
                    e.1 += 1;
                }
                let v = if e.1 > MAX_REQUEUES {
                    QueueVerdict::Drop
                } else {
                    QueueVerdict::Repeat
                };
                out.push((p.id, v));
            } else if now.saturating_duration_since(t) >= hold {
                out.push((p.id, QueueVerdict::Drop));
            } else {
                keep.push_back((t, p));
            }
        }
        self.q = keep;
        out
    }

    /// When the oldest packet expires.
    pub fn next_deadline(&self, hold: Duration) -> Option<Instant> {
        self.q.front().map(|(t, _)| *t + hold)
    }
}

struct Shared {
    bindings: Mutex<Bindings>,
    stop: AtomicBool,
    /// The thread holds a packet: only then must a new delta wake it. Set before the thread
    /// reads the bindings, so a delta committed after that read finds it set.
    holding: AtomicBool,
}

/// The holding thread and its queue. Dropping it stops the thread and closes the queue: the
/// kernel drops whatever was still held.
pub struct Holder {
    num: u16,
    shared: Arc<Shared>,
    wake: libc::c_int,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Holder {
    /// Binds queue `num` in this network namespace and starts holding.
    pub fn start(num: u16, hold: Duration, bindings: Bindings) -> Result<Holder, String> {
        let queue = Queue::bind(num, MAX_HELD as u32).map_err(|e| format!("queue {num}: {e}"))?;
        // SAFETY: eventfd with valid flags; the fd is owned by the Holder.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        let shared = Arc::new(Shared {
            bindings: Mutex::new(bindings),
            stop: AtomicBool::new(false),
            holding: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("netguard-hold".into())
            .spawn(move || run(queue, wake, hold, &s))
            .map_err(|e| format!("hold thread: {e}"))?;
        Ok(Holder {
            num,
            shared,
            wake,
            thread: Some(thread),
        })
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    fn bindings(&self) -> std::sync::MutexGuard<'_, Bindings> {
        self.shared
            .bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.wake, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// After a committed full ruleset.
    pub fn reset(&self, rs: &Ruleset) {
        *self.bindings() = Bindings::of(rs);
        self.poke();
    }

    /// After a committed element delta (every container event: the thread is woken only
    /// when it holds something).
    pub fn apply(&self, d: &Delta) {
        self.bindings().apply(d);
        if self.shared.holding.load(Ordering::SeqCst) {
            self.poke();
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: closing our own eventfd once, after the thread that polls it has ended.
        unsafe { libc::close(self.wake) };
    }
}

fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

fn run(mut queue: Queue, wake: libc::c_int, hold: Duration, shared: &Shared) {
    let mut held = Held::default();
    tracing::info!(
        queue = queue.num(),
        "holding packets of containers not admitted yet"
    );
    // What was released and dropped since the last summary (at most one per LOG_EVERY).
    let (mut released, mut dropped, mut last_log) = (0u64, 0u64, Instant::now());
    while !shared.stop.load(Ordering::SeqCst) {
        let timeout = held
            .next_deadline(hold)
            .map(|d| {
                let ms = d.saturating_duration_since(Instant::now()).as_millis();
                (ms as libc::c_int).saturating_add(1)
            })
            .unwrap_or(-1);
        let mut fds = [
            libc::pollfd {
                fd: queue.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            tracing::error!(error = %std::io::Error::last_os_error(), "hold: poll failed; held packets are dropped");
            return;
        }
        if fds[1].revents != 0 {
            let mut v: u64 = 0;
            // SAFETY: reading 8 bytes from our eventfd into v.
            unsafe { libc::read(wake, &mut v as *mut u64 as *mut libc::c_void, 8) };
        }
        let now = Instant::now();
        let mut verdicts = Vec::new();
        match queue.recv() {
            Ok(pkts) => {
                for p in pkts {
                    verdicts.extend(held.push(now, Named::of(&p, ifname)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "hold: reading the queue failed; held packets are dropped");
                return;
            }
        }
        shared.holding.store(!held.is_empty(), Ordering::SeqCst);
        {
            let b = shared.bindings.lock().unwrap_or_else(|e| e.into_inner());
            verdicts.extend(held.due(now, hold, &b));
        }
        shared.holding.store(!held.is_empty(), Ordering::SeqCst);
        for (id, v) in verdicts {
            match v {
                QueueVerdict::Repeat => released += 1,
                QueueVerdict::Drop => dropped += 1,
            }
            if let Err(e) = queue.verdict(id, v) {
                tracing::warn!(error = %e, id, "hold: a verdict was refused");
            }
        }
        if (released > 0 || dropped > 0) && last_log.elapsed() >= LOG_EVERY {
            tracing::info!(
                released,
                dropped,
                "held packets of containers not admitted yet: released ones went on to the \
                 rules once their admission was live; dropped ones found none within the hold"
            );
            (released, dropped, last_log) = (0, 0, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    /// web admitted on br0 at 10.0.0.2 through vweb with its MAC bound.
    fn bindings() -> Bindings {
        let mut d = Delta::default();
        let mut inet = BTreeMap::new();
        inet.insert(
            names::ALL_4.to_string(),
            vec![
                Elem::IfnameV4("br0".into(), "10.0.0.2".parse().unwrap()),
                Elem::IfnameV4("br0".into(), "10.0.0.3".parse().unwrap()),
            ],
        );
        let mut br = BTreeMap::new();
        br.insert(
            names::BIND_4.to_string(),
            vec![
                Elem::IfnameV4("vweb".into(), "10.0.0.2".parse().unwrap()),
                Elem::IfnameV4("vdb".into(), "10.0.0.3".parse().unwrap()),
            ],
        );
        br.insert(
            names::GENUINE_4.to_string(),
            vec![Elem::IfnameMacV4(
                "vweb".into(),
                mac("02:00:00:00:00:02"),
                "10.0.0.2".parse().unwrap(),
            )],
        );
        br.insert(
            names::MAC_VETHS.to_string(),
            vec![Elem::Ifname("vweb".into())],
        );
        d.add.insert(Family::Inet, inet);
        d.add.insert(Family::Bridge, br);
        let mut b = Bindings::default();
        b.apply(&d);
        b
    }

    fn pkt(id: u32, port: &str, m: &str, s: &str) -> Named {
        Named {
            id,
            bridge_in: Some("br0".into()),
            bridge_out: Some("br0".into()),
            port_in: Some(port.into()),
            src_mac: Some(mac(m)),
            saddr: Some(s.parse().unwrap()),
            daddr: Some("10.0.0.3".parse().unwrap()),
        }
    }

    #[test]
    fn only_a_packet_from_the_port_and_mac_its_address_is_bound_to_is_released() {
        let b = bindings();
        assert!(b.releases(&pkt(1, "vweb", "02:00:00:00:00:02", "10.0.0.2")));
        // Another port sending with web's address (before web's admission), another MAC on
        // web's MAC-bound port, an address no one holds.
        assert!(!b.releases(&pkt(2, "vrogue", "02:00:00:00:00:02", "10.0.0.2")));
        assert!(!b.releases(&pkt(3, "vweb", "02:00:00:00:00:99", "10.0.0.2")));
        assert!(!b.releases(&pkt(4, "vweb", "02:00:00:00:00:02", "10.0.0.9")));
        // db has no MAC binding: its port and address suffice.
        let mut to_web = pkt(5, "vdb", "02:00:00:00:00:77", "10.0.0.3");
        to_web.daddr = Some("10.0.0.2".parse().unwrap());
        assert!(b.releases(&to_web));
        // A destination not admitted keeps it held; so does a packet without a port.
        let mut nowhere = pkt(6, "vweb", "02:00:00:00:00:02", "10.0.0.2");
        nowhere.daddr = Some("10.0.0.50".parse().unwrap());
        assert!(!b.releases(&nowhere));
        let mut portless = pkt(7, "vweb", "02:00:00:00:00:02", "10.0.0.2");
        portless.port_in = None;
        assert!(!b.releases(&portless));
    }

    #[test]
    fn a_removed_binding_no_longer_releases_and_a_full_ruleset_replaces_the_mirror() {
        let mut b = bindings();
        let mut d = Delta::default();
        d.delete.insert(
            Family::Bridge,
            [(
                names::BIND_4.to_string(),
                vec![Elem::IfnameV4("vdb".into(), "10.0.0.3".parse().unwrap())],
            )]
            .into_iter()
            .collect(),
        );
        b.apply(&d);
        let mut from_db = pkt(1, "vdb", "02:00:00:00:00:77", "10.0.0.3");
        from_db.daddr = Some("10.0.0.2".parse().unwrap());
        assert!(!b.releases(&from_db));
        assert_eq!(
            Bindings::of(&Ruleset { tables: vec![] }),
            Bindings::default()
        );
    }

    #[test]
    fn packets_wait_for_their_admission_and_expire_after_the_hold() {
        let hold = Duration::from_millis(1000);
        let t0 = Instant::now();
        let mut h = Held::default();
        assert_eq!(
            h.push(t0, pkt(1, "vweb", "02:00:00:00:00:02", "10.0.0.2")),
            None
        );
        assert_eq!(
            h.push(t0, pkt(2, "vrogue", "02:00:00:00:00:05", "10.0.0.2")),
            None
        );
        // Nothing admitted yet: both wait.
        assert!(h.due(t0, hold, &Bindings::default()).is_empty());
        assert_eq!(h.next_deadline(hold), Some(t0 + hold));
        // web admitted: its packet goes round again; the pretender's stays.
        let b = bindings();
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(h.due(t1, hold, &b), vec![(1, QueueVerdict::Repeat)]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.due(t0 + hold, hold, &b), vec![(2, QueueVerdict::Drop)]);
        assert!(h.is_empty());
    }

    #[test]
    fn a_burst_is_released_whole_but_a_flow_the_kernel_keeps_queueing_is_dropped() {
        let hold = Duration::from_millis(1000);
        let b = bindings();
        let t0 = Instant::now();
        let mut h = Held::default();
        // Twenty packets of one flow held before the admission: all go round again.
        for i in 0..20 {
            h.push(t0, pkt(i, "vweb", "02:00:00:00:00:02", "10.0.0.2"));
        }
        let first = h.due(t0, hold, &b);
        assert_eq!(first.len(), 20);
        assert!(first.iter().all(|(_, v)| *v == QueueVerdict::Repeat));
        // Queued again after their release, over and over: a few more rounds, then dropped.
        let mut verdicts = Vec::new();
        for i in 0..(MAX_REQUEUES + 2) {
            let t = t0 + Duration::from_millis(1 + u64::from(i));
            h.push(t, pkt(100 + i, "vweb", "02:00:00:00:00:02", "10.0.0.2"));
            verdicts.extend(h.due(t, hold, &b));
        }
        let repeats = verdicts
            .iter()
            .filter(|(_, v)| *v == QueueVerdict::Repeat)
            .count();
        assert_eq!(repeats, MAX_REQUEUES as usize);
        assert_eq!(verdicts.last().map(|v| v.1), Some(QueueVerdict::Drop));
    }

    #[test]
    fn a_full_queue_drops_at_once() {
        let t0 = Instant::now();
        let mut h = Held::default();
        for i in 0..MAX_HELD as u32 {
            assert_eq!(
                h.push(t0, pkt(i, "vweb", "02:00:00:00:00:02", "10.0.0.2")),
                None
            );
        }
        assert_eq!(
            h.push(t0, pkt(9999, "vweb", "02:00:00:00:00:02", "10.0.0.2")),
            Some((9999, QueueVerdict::Drop))
        );
    }
}
