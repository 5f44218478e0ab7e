//! Unit tests of the Docker → inventory mapping, without Docker.
//!
//! The fixtures are real answers of Docker 20.10 (API 1.41) recorded with
//! `curl --unix-socket /var/run/docker.sock http://localhost/v1.41/...` for this scene:
//! `fx-web` (labels, on `fx-front` and the IPv6 network `fx-v6`), `fx-api` on `fx-named`
//! (bridge name option `fxbr0`), `fx-def` on the default bridge, `fx-side` with
//! `--network container:fx-web`, `fx-host` (`--network host`), `fx-none` (`--network none`),
//! `fx-mv` on the macvlan network `fx-mac`.
//!
//! `pub/` holds a second recorded scene for published ports: `fx-pub` on `fx-pubnet` (IPv6 on)
//! started with `-p 15432:5432 -p 127.0.0.1:18080:80/udp --expose 9000`.

use bollard::models::{ContainerInspectResponse, ContainerSummary, Network};
use netguard::docker::map::BRIDGE_NAME_OPTION;
use netguard::docker::{StaticVethResolver, VethError, bridge_name, map_inventory, needs_inspect};
use netguard::inventory::{Container, Inventory};
use std::collections::HashMap;

const WEB: &str = "bda84093dfc06d82839faca8b311726f4275c29a9f2aba4f0e7ad7d74e46f2a5";
const API: &str = "efd988575535eaf3f40bff1f72a7e7e041790a6cc09a3baf0d597d482954cd2e";
const DEF: &str = "832f8e4e107e9730bb5fd395cd40b76d5847d74616e6e5ca982551ea5982dd3e";

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/docker/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Scene {
    containers: Vec<ContainerSummary>,
    networks: Vec<Network>,
    inspected: HashMap<String, ContainerInspectResponse>,
}

/// The recorded answers, with inspects only for the containers the source would inspect.
fn scene() -> Scene {
    let containers: Vec<ContainerSummary> = fixture("containers.json");
    let networks: Vec<Network> = fixture("networks.json");
    let mut inspected = HashMap::new();
    for n in [
        "fx-web", "fx-api", "fx-def", "fx-side", "fx-host", "fx-none", "fx-mv",
    ] {
        let i: ContainerInspectResponse = fixture(&format!("inspect-{n}.json"));
        let id = i.id.clone().expect("id");
        let summary = containers
            .iter()
            .find(|c| c.id.as_deref() == Some(id.as_str()))
            .expect("listed");
        if needs_inspect(summary, &networks) {
            inspected.insert(id, i);
        }
    }
    Scene {
        containers,
        networks,
        inspected,
    }
}

fn resolver() -> StaticVethResolver {
    StaticVethResolver::default()
        .with(WEB, "fx-front", "veth232dfb8", "br-53e3b9c918c2")
        .with(WEB, "fx-v6", "vethd005f6d", "br-265f044fa62d")
        .with(API, "fx-named", "veth197bd5a", "fxbr0")
        .with(DEF, "bridge", "vethe0794dd", "docker0")
}

fn container<'a>(inv: &'a Inventory, name: &str) -> &'a Container {
    inv.find(name)
        .unwrap_or_else(|| panic!("{name} not in inventory: {inv:#?}"))
}

#[test]
fn inspects_only_containers_with_bridge_endpoints() {
    let s = scene();
    let mut ids: Vec<&str> = s.inspected.keys().map(String::as_str).collect();
    ids.sort();
    let mut want = vec![WEB, API, DEF];
    want.sort();
    assert_eq!(ids, want, "host/none/macvlan/container: need no inspect");
}

#[test]
fn maps_names_images_labels_bridges_addresses_and_veths() {
    let s = scene();
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    let names: Vec<&str> = inv.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fx-api", "fx-def", "fx-side", "fx-web"]);

    let web = container(&inv, "fx-web");
    assert_eq!(web.id, WEB);
    assert_eq!(web.image, "netguard-busybox:test");
    assert_eq!(web.labels.get("role").map(String::as_str), Some("web"));
    assert_eq!(
        web.labels
            .get("com.docker.compose.service")
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(web.endpoints.len(), 2);
    let front = &web.endpoints[0];
    assert_eq!(front.network, "fx-front");
    assert_eq!(
        front.network_id.as_deref(),
        Some("53e3b9c918c21da769014f3c09c3b61d6de71580ebbe3c39dc66be408aeba895")
    );
    assert_eq!(front.bridge, "br-53e3b9c918c2");
    assert_eq!(front.veth.as_deref(), Some("veth232dfb8"));
    assert_eq!(front.ipv4, Some("172.18.0.2".parse().unwrap()));
    assert_eq!(front.ipv6, None);
    assert_eq!(front.mac.as_deref(), Some("02:42:ac:12:00:02"));
    let v6 = &web.endpoints[1];
    assert_eq!(v6.network, "fx-v6");
    assert_eq!(v6.bridge, "br-265f044fa62d");
    assert_eq!(v6.ipv4, Some("172.19.0.2".parse().unwrap()));
    assert_eq!(v6.ipv6, Some("fd42:f1::2".parse().unwrap()));
    assert_eq!(v6.veth.as_deref(), Some("vethd005f6d"));

    let api = container(&inv, "fx-api");
    assert_eq!(
        api.endpoints[0].bridge, "fxbr0",
        "bridge name option honoured"
    );
    assert_eq!(api.endpoints[0].veth.as_deref(), Some("veth197bd5a"));
    let def = container(&inv, "fx-def");
    assert_eq!(def.endpoints[0].network, "bridge");
    assert_eq!(def.endpoints[0].bridge, "docker0");
    assert_eq!(def.endpoints[0].ipv4, Some("172.17.0.2".parse().unwrap()));
    assert!(def.labels.is_empty());

    let bridges: Vec<(&str, Option<&str>, &str)> = inv
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.bridge.as_deref(), n.driver.as_str()))
        .collect();
    assert_eq!(
        bridges,
        [
            ("bridge", Some("docker0"), "bridge"),
            ("fx-front", Some("br-53e3b9c918c2"), "bridge"),
            ("fx-mac", None, "macvlan"),
            ("fx-named", Some("fxbr0"), "bridge"),
            ("fx-v6", Some("br-265f044fa62d"), "bridge"),
            ("host", None, "host"),
            ("none", None, "null"),
        ]
    );
}

#[test]
fn network_container_shares_the_target_endpoints() {
    let s = scene();
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    let side = container(&inv, "fx-side");
    let web = container(&inv, "fx-web");
    assert_eq!(side.labels.get("role").map(String::as_str), Some("side"));
    assert_eq!(side.endpoints, web.endpoints);
}

#[test]
fn unisolable_containers_are_reported_with_reasons() {
    let s = scene();
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    let got: Vec<(&str, &str)> = inv
        .unisolable
        .iter()
        .map(|u| (u.name.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, "fx-host");
    assert!(got[0].1.contains("--network host"), "{}", got[0].1);
    assert_eq!(got[1].0, "fx-mv");
    assert!(got[1].1.contains("macvlan"), "{}", got[1].1);
    assert_eq!(got[2].0, "fx-none");
    assert!(got[2].1.contains("--network none"), "{}", got[2].1);
}

#[test]
fn bridge_mismatch_drops_the_endpoint_and_reports_it() {
    let s = scene();
    let r = resolver().with(API, "fx-named", "veth197bd5a", "docker0");
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &r);
    assert!(
        inv.find("fx-api").is_none(),
        "its only endpoint was dropped"
    );
    let u = inv
        .unisolable
        .iter()
        .find(|u| u.name == "fx-api")
        .expect("reported");
    assert!(
        u.reason.contains("veth197bd5a") && u.reason.contains("fxbr0"),
        "{}",
        u.reason
    );
}

#[test]
fn container_gone_during_resolution_is_skipped_with_its_sharers() {
    let s = scene();
    let r = resolver().with_error(WEB, "fx-front", VethError::Gone);
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &r);
    assert!(inv.find("fx-web").is_none());
    assert!(inv.find("fx-api").is_some());
    // fx-side shared fx-web's namespace: with it gone there is nothing to copy, say so.
    assert!(inv.find("fx-side").is_none());
    assert!(inv.unisolable.iter().any(|u| u.name == "fx-side"));
}

#[test]
fn container_gone_between_list_and_inspect_is_skipped() {
    let mut s = scene();
    s.inspected.remove(DEF);
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    assert!(inv.find("fx-def").is_none());
    assert_eq!(inv.containers.len(), 3);
}

#[test]
fn unresolved_veth_keeps_the_endpoint_without_veth() {
    let s = scene();
    let r = resolver().with_error(
        API,
        "fx-named",
        VethError::NoInterface {
            mac: "02:42:ac:14:00:02".into(),
        },
    );
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &r);
    assert_eq!(container(&inv, "fx-api").endpoints[0].veth, None);
}

#[test]
fn image_shown_as_id_is_taken_from_the_inspect() {
    let mut s = scene();
    for c in &mut s.containers {
        if c.id.as_deref() == Some(DEF) {
            c.image = c.image_id.clone();
            assert!(needs_inspect(c, &s.networks));
        }
    }
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    assert_eq!(container(&inv, "fx-def").image, "netguard-busybox:test");
}

#[test]
fn inventory_round_trips_through_json() {
    let s = scene();
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    let text = serde_json::to_string(&inv).unwrap();
    let back: Inventory = serde_json::from_str(&text).unwrap();
    assert_eq!(back, inv);
}

/// The default network as some engines list it: no `com.docker.network.bridge.name` option
/// (the recorded answer carries it; here it is taken out). Its bridge is still `docker0`.
#[test]
fn default_bridge_without_the_name_option_is_docker0() {
    let mut s = scene();
    let bridge = s
        .networks
        .iter_mut()
        .find(|n| n.name.as_deref() == Some("bridge"))
        .expect("default network recorded");
    let options = bridge.options.as_mut().expect("recorded options");
    assert!(options.remove(BRIDGE_NAME_OPTION).is_some());
    assert_eq!(bridge_name(bridge).as_deref(), Some("docker0"));
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    let def = container(&inv, "fx-def");
    assert_eq!(def.endpoints[0].bridge, "docker0");
    assert_eq!(def.endpoints[0].veth.as_deref(), Some("vethe0794dd"));
    let net = inv
        .networks
        .iter()
        .find(|n| n.name == "bridge")
        .expect("listed");
    assert_eq!(net.bridge.as_deref(), Some("docker0"));
}

/// ipvlan and overlay attachments, like macvlan, never cross a host bridge: the recorded
/// macvlan network `fx-mac` with its driver swapped.
#[test]
fn ipvlan_and_overlay_are_unisolable() {
    for driver in ["ipvlan", "overlay"] {
        let mut s = scene();
        let mac = s
            .networks
            .iter_mut()
            .find(|n| n.name.as_deref() == Some("fx-mac"))
            .expect("fx-mac recorded");
        mac.driver = Some(driver.to_string());
        let mv = s
            .containers
            .iter()
            .find(|c| c.names.as_deref() == Some(&["/fx-mv".to_string()][..]))
            .expect("fx-mv listed");
        assert!(
            !needs_inspect(mv, &s.networks),
            "{driver}: nothing to inspect"
        );
        let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
        assert!(inv.find("fx-mv").is_none(), "{driver}: not isolated");
        let u = inv
            .unisolable
            .iter()
            .find(|u| u.name == "fx-mv")
            .unwrap_or_else(|| panic!("{driver}: fx-mv not reported: {:#?}", inv.unisolable));
        assert!(
            u.reason.contains(&format!("driver \"{driver}\"")) && u.reason.contains("fx-mac"),
            "{driver}: {}",
            u.reason
        );
        let net = inv
            .networks
            .iter()
            .find(|n| n.name == "fx-mac")
            .expect("listed");
        assert_eq!((net.driver.as_str(), net.bridge.as_deref()), (driver, None));
    }
}

const PUB: &str = "205ca5e17811c531e9dbd936f65c41d0405854791321a3672699780a27ab440b";

#[test]
fn published_ports_come_from_the_inspect() {
    use netguard::inventory::{PortProto, PublishedPort};
    let containers: Vec<ContainerSummary> = fixture("pub/containers-pub.json");
    let networks: Vec<Network> = fixture("pub/networks-pub.json");
    let insp: ContainerInspectResponse = fixture("pub/inspect-fx-pub.json");
    assert!(needs_inspect(&containers[0], &networks));
    let inspected = HashMap::from([(PUB.to_string(), insp)]);
    let resolver =
        StaticVethResolver::default().with(PUB, "fx-pubnet", "veth0fxpub", "br-c61ef2f44d3f");
    let inv = map_inventory(&containers, &networks, &inspected, &resolver);
    let p = container(&inv, "fx-pub");
    // 0.0.0.0 and :: are one "any address" entry; 9000 is exposed, not published.
    assert_eq!(
        p.published,
        vec![
            PublishedPort {
                proto: PortProto::Tcp,
                host_port: 15432,
                container_port: 5432,
                host_ip: None,
            },
            PublishedPort {
                proto: PortProto::Udp,
                host_port: 18080,
                container_port: 80,
                host_ip: Some("127.0.0.1".parse().expect("ip")),
            },
        ]
    );
}

#[test]
fn containers_without_published_ports_have_none() {
    let s = scene();
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    for c in &inv.containers {
        assert!(c.published.is_empty(), "{}: {:?}", c.name, c.published);
    }
}
