//! Per-bridge br_netfilter switches (`IFLA_BR_NF_CALL_IPTABLES`/`_IP6TABLES`): they make
//! the inet forward hook see traffic between two ports of one bridge, without turning on
//! the host-wide sysctl that would push every other bridge through FORWARD (docs/architecture.md 5.2).

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoBridge, InfoData, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0} is not a bridge")]
    NotABridge(String),
    #[error(
        "cannot make the inet hook see bridge {bridge}: {reason}; refusing to claim enforcement"
    )]
    Refused { bridge: String, reason: String },
    #[error(
        "br_netfilter is not loaded and could not be loaded ({0}): without it the inet hook sees \
         no traffic between two containers of one bridge; refusing to claim enforcement \
         (load it with `modprobe br_netfilter`, and list it in /etc/modules-load.d to keep it)"
    )]
    NoBrNetfilter(String),
}

/// Where br_netfilter shows itself: its sysctls exist (per network namespace) only while
/// the module is loaded or built in. The per-bridge switches, by contrast, live in the
/// bridge driver and can be turned on without it, to no effect.
const BR_NETFILTER_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NfCall {
    pub iptables: bool,
    pub ip6tables: bool,
}

/// `net.bridge.bridge-nf-call-iptables` / `-ip6tables` in this network namespace; `None`
/// when br_netfilter is not loaded (then no bridge is seen by the inet hook at all).
pub fn global_nf_call() -> Option<(bool, bool)> {
    let on = |p: &str| std::fs::read_to_string(p).ok().map(|v| v.trim() == "1");
    let [v4, v6] = BR_NETFILTER_SYSCTLS;
    Some((on(v4)?, on(v6)?))
}

impl NfCall {
    /// Both switches on: IPv4 and IPv6 bridged traffic both go through the inet hook.
    pub fn both_on(self) -> bool {
        self.iptables && self.ip6tables
    }
}

/// Why the inet forward hook does not see the traffic a bridge forwards between its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blind {
    /// br_netfilter is not loaded: no bridge is seen, whatever its switches say.
    NoBrNetfilter,
    /// Neither the bridge's own switches nor the host-wide sysctls are on.
    SwitchesOff,
}

/// The one answer to "does the inet forward hook see this bridge" (`None`: it does), from the
/// host-wide sysctls (`None`: br_netfilter not loaded, see [`global_nf_call`]) and the
/// bridge's own switches (`None`: no such bridge). `apply`'s preview (`diff`), `status` and
/// `explain` all ask this, so that they cannot disagree.
pub fn forward_hook_blind(global: Option<(bool, bool)>, nf_call: Option<NfCall>) -> Option<Blind> {
    match global {
        None => Some(Blind::NoBrNetfilter),
        Some((true, true)) => None,
        Some(_) if nf_call.is_some_and(NfCall::both_on) => None,
        Some(_) => Some(Blind::SwitchesOff),
    }
}

/// One bridge as the inet forward hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSight {
    /// `None`: the bridge does not exist.
    pub nf_call: Option<NfCall>,
    /// `None`: the hook sees its traffic.
    pub blind: Option<Blind>,
}

/// What `apply` needs from the host's bridges.
#[allow(async_fn_in_trait)]
pub trait BridgeControl {
    /// `None` when the bridge does not exist.
    async fn nf_call(&self, bridge: &str) -> Result<Option<NfCall>, BridgeError>;
    async fn enable_nf_call(&self, bridge: &str) -> Result<(), BridgeError>;

    /// The host-wide switches, `None` without br_netfilter (see [`global_nf_call`]).
    fn global_nf_call(&self) -> Option<(bool, bool)> {
        global_nf_call()
    }

    /// br_netfilter is active in the current network namespace.
    fn br_netfilter_loaded(&self) -> bool {
        self.global_nf_call().is_some()
    }

    /// Whether the inet forward hook sees `bridge`, by [`forward_hook_blind`].
    async fn forward_hook(&self, bridge: &str) -> Result<HookSight, BridgeError> {
        let nf_call = self.nf_call(bridge).await?;
        Ok(HookSight {
            nf_call,
            blind: forward_hook_blind(self.global_nf_call(), nf_call),
        })
    }

    /// Loads br_netfilter. Loading turns the host-wide switches on in every namespace
    /// (the kernel's default), which would send every other bridge (libvirt, LXC) through
    /// the FORWARD chains; before the load no bridge was, so the switches are set back off
    /// here, where netguard needs only its per-bridge ones.
    async fn load_br_netfilter(&self) -> Result<(), BridgeError> {
        let out = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .output()
            .await
            .map_err(|e| BridgeError::NoBrNetfilter(format!("cannot run modprobe: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            return Err(BridgeError::NoBrNetfilter(if err.is_empty() {
                format!("modprobe br_netfilter: {}", out.status)
            } else {
                err.to_string()
            }));
        }
        for p in BR_NETFILTER_SYSCTLS {
            // Absent after a successful modprobe: the check after this call refuses.
            if std::path::Path::new(p).exists() {
                std::fs::write(p, "0")
                    .map_err(|e| BridgeError::NoBrNetfilter(format!("{p}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Turns both switches on where needed and verifies them. Missing bridges are returned
    /// (nothing can cross a bridge that does not exist) so the caller can warn.
    async fn ensure_nf_call(&self, bridges: &[String]) -> Result<Vec<String>, BridgeError> {
        if !bridges.is_empty() && !self.br_netfilter_loaded() {
            self.load_br_netfilter().await?;
            if !self.br_netfilter_loaded() {
                return Err(BridgeError::NoBrNetfilter(
                    "its sysctls are still missing after loading it".into(),
                ));
            }
            tracing::info!("loaded br_netfilter; host-wide bridge-nf-call switches left off");
        }
        let mut missing = Vec::new();
        for b in bridges {
            let state = match self.nf_call(b).await {
                Err(BridgeError::NotABridge(_)) => {
                    return Err(BridgeError::Refused {
                        bridge: b.clone(),
                        reason: "it is not a bridge".into(),
                    });
                }
                other => other?,
            };
            match state {
                None => missing.push(b.clone()),
                Some(NfCall {
                    iptables: true,
                    ip6tables: true,
                }) => {}
                Some(_) => {
                    self.enable_nf_call(b)
                        .await
                        .map_err(|e| BridgeError::Refused {
                            bridge: b.clone(),
                            reason: e.to_string(),
                        })?;
                    match self.nf_call(b).await? {
                        Some(NfCall {
                            iptables: true,
                            ip6tables: true,
                        }) => {}
                        _ => {
                            return Err(BridgeError::Refused {
                                bridge: b.clone(),
                                reason:
                                    "the kernel did not keep nf_call_iptables/nf_call_ip6tables on"
                                        .into(),
                            });
                        }
                    }
                }
            }
        }
        Ok(missing)
    }
}

/// The existing bridges among `bridges` whose traffic the inet forward hook does not see
/// today: open, whatever netguard's tables say. A bridge that cannot be read is left out
/// (this feeds a preview, which must not fail for it).
pub async fn unseen_bridges<'a>(
    ctl: &impl BridgeControl,
    bridges: impl IntoIterator<Item = &'a String>,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for b in bridges {
        if let Ok(HookSight {
            nf_call: Some(_),
            blind: Some(_),
        }) = ctl.forward_hook(b).await
        {
            out.insert(b.clone());
        }
    }
    out
}

/// rtnetlink in the current network namespace.
pub struct NetlinkBridges {
    handle: Handle,
}

impl NetlinkBridges {
    /// Must be called inside a tokio runtime: the connection task is spawned on it.
    pub fn connect() -> Result<NetlinkBridges, BridgeError> {
        crate::fault::check(crate::fault::NETLINK)
            .map_err(|e| BridgeError::Netlink(e.to_string()))?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| BridgeError::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        Ok(NetlinkBridges { handle })
    }
}

fn bridge_info(msg: &LinkMessage) -> Option<&Vec<InfoBridge>> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Bridge(b)) => Some(b),
            _ => None,
        }),
        _ => None,
    })
}

impl BridgeControl for NetlinkBridges {
    async fn nf_call(&self, bridge: &str) -> Result<Option<NfCall>, BridgeError> {
        crate::fault::check(crate::fault::NETLINK)
            .map_err(|e| BridgeError::Netlink(e.to_string()))?;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(bridge.to_string())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Ok(None);
            }
            Err(e) => return Err(BridgeError::Netlink(e.to_string())),
        };
        let info = bridge_info(&msg).ok_or_else(|| BridgeError::NotABridge(bridge.to_string()))?;
        let mut state = NfCall {
            iptables: false,
            ip6tables: false,
        };
        for i in info {
            match i {
                InfoBridge::NfCallIpTables(v) => state.iptables = *v,
                InfoBridge::NfCallIp6Tables(v) => state.ip6tables = *v,
                _ => {}
            }
        }
        Ok(Some(state))
    }

    async fn enable_nf_call(&self, bridge: &str) -> Result<(), BridgeError> {
        // An RTM_NEWLINK carrying IFLA_BR_NF_CALL_* built with rtnetlink 0.24 is acknowledged
        // by this kernel but not applied (verified by reading the flags back), while iproute2's
        // request is; until that is understood, the switch is flipped with `ip` and verified
        // over netlink by the caller.
        let out = tokio::process::Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                bridge,
                "type",
                "bridge",
                "nf_call_iptables",
                "1",
                "nf_call_ip6tables",
                "1",
            ])
            .output()
            .await
            .map_err(|e| BridgeError::Netlink(format!("cannot run ip: {e}")))?;
        if !out.status.success() {
            return Err(BridgeError::Netlink(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    /// A host whose bridges and br_netfilter behave as each test says.
    #[derive(Default)]
    struct FakeHost {
        bridges: RefCell<BTreeMap<String, NfCall>>,
        /// The kernel ignores the switch on these (what a missing br_netfilter looks like
        /// to a caller that only reads the flags back).
        sticky_off: Vec<String>,
        br_netfilter: Cell<bool>,
        /// The host-wide sysctls while br_netfilter is loaded.
        sysctls: Cell<(bool, bool)>,
        loadable: bool,
        loads: Cell<u32>,
        enables: RefCell<Vec<String>>,
    }

    const OFF: NfCall = NfCall {
        iptables: false,
        ip6tables: false,
    };
    const ON: NfCall = NfCall {
        iptables: true,
        ip6tables: true,
    };

    impl FakeHost {
        fn with(bridges: &[(&str, NfCall)]) -> FakeHost {
            FakeHost {
                bridges: RefCell::new(bridges.iter().map(|(b, f)| (b.to_string(), *f)).collect()),
                br_netfilter: Cell::new(true),
                ..FakeHost::default()
            }
        }
    }

    impl BridgeControl for FakeHost {
        async fn nf_call(&self, bridge: &str) -> Result<Option<NfCall>, BridgeError> {
            Ok(self.bridges.borrow().get(bridge).copied())
        }
        async fn enable_nf_call(&self, bridge: &str) -> Result<(), BridgeError> {
            self.enables.borrow_mut().push(bridge.to_string());
            if !self.sticky_off.iter().any(|b| b == bridge) {
                self.bridges.borrow_mut().insert(bridge.to_string(), ON);
            }
            Ok(())
        }
        fn global_nf_call(&self) -> Option<(bool, bool)> {
            self.br_netfilter.get().then(|| self.sysctls.get())
        }
        async fn load_br_netfilter(&self) -> Result<(), BridgeError> {
            self.loads.set(self.loads.get() + 1);
            if !self.loadable {
                return Err(BridgeError::NoBrNetfilter(
                    "modprobe: FATAL: Module br_netfilter not found".into(),
                ));
            }
            self.br_netfilter.set(true);
            Ok(())
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn switches_are_turned_on_only_where_off_and_missing_bridges_reported() {
        let host = FakeHost::with(&[("br-a", ON), ("br-b", OFF)]);
        let missing = host
            .ensure_nf_call(&names(&["br-a", "br-b", "br-gone"]))
            .await
            .unwrap();
        assert_eq!(missing, names(&["br-gone"]));
        assert_eq!(*host.enables.borrow(), names(&["br-b"]));
        assert_eq!(host.bridges.borrow()["br-b"], ON);
        assert_eq!(host.loads.get(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_switch_the_kernel_does_not_keep_is_refused() {
        let mut host = FakeHost::with(&[("br-a", ON), ("br-b", OFF)]);
        host.sticky_off = names(&["br-b"]);
        let err = host
            .ensure_nf_call(&names(&["br-a", "br-b"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BridgeError::Refused { bridge, .. } if bridge == "br-b"),
            "{err}"
        );
        assert!(err.to_string().contains("refusing to claim enforcement"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_br_netfilter_is_loaded_before_the_switches() {
        let host = FakeHost {
            loadable: true,
            ..FakeHost::with(&[("br-a", OFF)])
        };
        host.br_netfilter.set(false);
        host.ensure_nf_call(&names(&["br-a"])).await.unwrap();
        assert_eq!(host.loads.get(), 1);
        assert_eq!(host.bridges.borrow()["br-a"], ON);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn br_netfilter_that_cannot_be_loaded_is_refused_even_with_the_switches_on() {
        // The flags are on (they live in the bridge driver), yet nothing reaches the hook.
        let host = FakeHost::with(&[("br-a", ON)]);
        host.br_netfilter.set(false);
        let err = host.ensure_nf_call(&names(&["br-a"])).await.unwrap_err();
        assert!(matches!(err, BridgeError::NoBrNetfilter(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("modprobe br_netfilter"), "{msg}");
        assert!(msg.contains("Module br_netfilter not found"), "{msg}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_managed_bridge_needs_no_br_netfilter() {
        let host = FakeHost::with(&[]);
        host.br_netfilter.set(false);
        assert!(host.ensure_nf_call(&[]).await.unwrap().is_empty());
        assert_eq!(host.loads.get(), 0);
    }

    /// br_netfilter missing with a bridge whose own switches are on: where `status` said
    /// "not filtered", `diff` counted the bridge as filtered and `explain` only knew about
    /// the module. The switches live in the bridge driver; without the module nothing
    /// reaches the hook, so every reading must call that bridge unseen.
    #[tokio::test(flavor = "current_thread")]
    async fn without_br_netfilter_no_bridge_is_seen_even_with_its_switches_on() {
        let host = FakeHost::with(&[("br-on", ON), ("br-off", OFF)]);
        host.br_netfilter.set(false);
        for b in ["br-on", "br-off"] {
            let sight = host.forward_hook(b).await.unwrap();
            assert_eq!(sight.blind, Some(Blind::NoBrNetfilter), "{b}");
        }
        let all = names(&["br-on", "br-off", "br-gone"]);
        assert_eq!(
            unseen_bridges(&host, &all).await,
            ["br-off", "br-on"].map(String::from).into()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_br_netfilter_the_bridge_switches_or_the_sysctls_decide() {
        let host = FakeHost::with(&[("br-on", ON), ("br-off", OFF)]);
        let all = names(&["br-on", "br-off", "br-gone"]);
        let blind = async |b: &str| host.forward_hook(b).await.unwrap().blind;
        assert_eq!(blind("br-on").await, None);
        assert_eq!(blind("br-off").await, Some(Blind::SwitchesOff));
        // A bridge that does not exist forwards nothing: not reported as open.
        assert_eq!(
            host.forward_hook("br-gone").await.unwrap(),
            HookSight {
                nf_call: None,
                blind: Some(Blind::SwitchesOff)
            }
        );
        assert_eq!(
            unseen_bridges(&host, &all).await,
            ["br-off".to_string()].into()
        );
        // Half of the host-wide switches is not enough: IPv6 would pass unfiltered.
        host.sysctls.set((true, false));
        assert_eq!(blind("br-off").await, Some(Blind::SwitchesOff));
        host.sysctls.set((true, true));
        assert_eq!(blind("br-off").await, None);
        assert!(unseen_bridges(&host, &all).await.is_empty());
    }
}
