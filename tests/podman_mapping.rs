//! Unit tests of the Podman → inventory mapping, without Podman.
//!
//! The fixtures are real answers of rootful Podman 4.3.1 (see `tests/fixtures/podman/README.md`
//! for the scene and how it was recorded): `px-web` (labels, on `px-front` and the IPv6 network
//! `px-v6`), `px-api` on `px-named` (bridge `pxbr0` asked for), `px-def` on the default network
//! `podman`, `px-side` with `--network container:px-web`, `px-host` and `px-none`.

#[path = "common/fake_daemon.rs"]
mod fake_daemon;

use bollard::models::{ContainerInspectResponse, ContainerSummary, Network, SystemVersion};
use netguard::docker::podman::{LibpodNetwork, adopt, libpod_api};
use netguard::docker::{
    StaticVethResolver, bridge_name, map_inventory, names_unknown_network, needs_inspect,
};
use netguard::inventory::{Container, Inventory};
use std::collections::HashMap;

const WEB: &str = "d70e4ec997a07245f45f76baf030f13d320212e94142be80c6e2cc5fabb0ae61";
const API: &str = "7dda3387ec7d0203b77b0d71c44e722ca2b837853cb4ca38381950abb2f7128f";
const DEF: &str = "b911af1696feb7f36729cb41e6ad215e6f7b5a0796425a3205ba40081fd0edc5";
const NAMES: [&str; 6] = [
    "px-web", "px-api", "px-def", "px-side", "px-host", "px-none",
];

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/podman/{name}",
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

/// The recorded answers as the source sees them: the compat network list fixed up from
/// Podman's own (unless `compat_only`), inspects for the containers it would inspect.
fn scene(compat_only: bool) -> Scene {
    let containers: Vec<ContainerSummary> = fixture("containers.json");
    let mut networks: Vec<Network> = fixture("networks.json");
    if !compat_only {
        let libpod: Vec<LibpodNetwork> = fixture("libpod-networks.json");
        adopt(&mut networks, &libpod);
    }
    let mut inspected = HashMap::new();
    for n in NAMES {
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

/// The host veths and their bridges as `ip link` showed them in Podman's namespace.
fn resolver() -> StaticVethResolver {
    StaticVethResolver::default()
        .with(WEB, "px-front", "veth0", "podman1")
        .with(WEB, "px-v6", "veth1", "podman2")
        .with(API, "px-named", "veth2", "pxbr0")
        .with(DEF, "podman", "veth3", "podman0")
}

fn inventory() -> Inventory {
    let s = scene(false);
    map_inventory(&s.containers, &s.networks, &s.inspected, &resolver())
}

fn container<'a>(inv: &'a Inventory, name: &str) -> &'a Container {
    inv.find(name)
        .unwrap_or_else(|| panic!("{name} not in inventory: {inv:#?}"))
}

#[test]
fn podman_is_told_from_docker_by_its_version_answer() {
    let podman: SystemVersion = fixture("version.json");
    assert_eq!(libpod_api(&podman).as_deref(), Some("4.3.1"));

    // Docker 20.10's answer (shape of `GET /version`, trimmed): its engine component is
    // called "Engine", and nothing names Podman.
    let docker: SystemVersion = serde_json::from_str(
        r#"{"Platform":{"Name":"Docker Engine - Community"},
            "Components":[{"Name":"Engine","Version":"20.10.24",
                           "Details":{"ApiVersion":"1.41","MinAPIVersion":"1.12"}},
                          {"Name":"containerd","Version":"1.6.20","Details":{}}],
            "Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#,
    )
    .unwrap();
    assert_eq!(libpod_api(&docker), None);
}

#[test]
fn an_unusable_libpod_version_falls_back_to_the_oldest_supported() {
    let mut v: SystemVersion = fixture("version.json");
    for c in v.components.iter_mut().flatten() {
        if let Some(d) = c.details.as_mut() {
            d.insert("APIVersion".into(), "4.3.1/../../x".into());
        }
    }
    assert_eq!(libpod_api(&v).as_deref(), Some("4.0.0"));
}

/// Why Podman needs its own network list: the compat one alone names Docker's bridges,
/// and every Podman endpoint then fails the bridge check.
#[test]
fn compat_networks_alone_name_bridges_that_do_not_exist() {
    let s = scene(true);
    let front = s
        .networks
        .iter()
        .find(|n| n.name.as_deref() == Some("px-front"))
        .unwrap();
    assert_eq!(bridge_name(front).as_deref(), Some("br-0b6b08eb9220"));
    let named = s
        .networks
        .iter()
        .find(|n| n.name.as_deref() == Some("px-named"))
        .unwrap();
    assert_eq!(
        bridge_name(named).as_deref(),
        Some("br-532bd1897a9e"),
        "the bridge name asked for is lost"
    );
    assert!(
        s.networks
            .iter()
            .all(|n| n.name.as_deref() != Some("podman")),
        "the default network is listed as `bridge`"
    );

    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    assert!(inv.containers.is_empty(), "{:#?}", inv.containers);
    let reason = |name: &str| {
        inv.unisolable
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.reason.clone())
            .unwrap_or_else(|| panic!("{name} not reported: {:#?}", inv.unisolable))
    };
    assert!(
        reason("px-web").contains("hangs on bridge podman1, not on br-0b6b08eb9220"),
        "{}",
        reason("px-web")
    );
    assert!(
        reason("px-def").contains("network podman, which Docker did not list"),
        "{}",
        reason("px-def")
    );
}

#[test]
fn adopted_networks_carry_podmans_names_and_bridges() {
    let s = scene(false);
    let got: Vec<(&str, Option<String>, Option<&str>)> = s
        .networks
        .iter()
        .map(|n| {
            (
                n.name.as_deref().unwrap_or(""),
                bridge_name(n),
                n.labels
                    .as_ref()
                    .and_then(|l| l.get("tier"))
                    .map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("px-named", Some("pxbr0".to_string()), Some("named")),
            ("px-v6", Some("podman2".to_string()), None),
            ("podman", Some("podman0".to_string()), None),
            ("px-front", Some("podman1".to_string()), None),
        ]
    );
}

#[test]
fn adopt_leaves_networks_podman_did_not_list_alone() {
    let mut networks: Vec<Network> = fixture("networks.json");
    let before = networks.clone();
    let libpod: Vec<LibpodNetwork> = fixture("libpod-networks.json");
    // As if px-front was created between the two lists.
    let libpod: Vec<LibpodNetwork> = libpod
        .into_iter()
        .filter(|l| l.name.as_deref() != Some("px-front"))
        .collect();
    adopt(&mut networks, &libpod);
    let front = |nets: &[Network]| {
        nets.iter()
            .find(|n| n.name.as_deref() == Some("px-front"))
            .cloned()
    };
    assert_eq!(front(&networks), front(&before));
    assert!(front(&networks).is_some());
}

#[test]
fn every_podman_container_is_inspected_for_its_network_mode() {
    let s = scene(false);
    assert!(s.containers.iter().all(|c| c.host_config.is_none()));
    assert_eq!(s.inspected.len(), NAMES.len());
}

#[test]
fn maps_names_images_labels_bridges_addresses_and_veths() {
    let inv = inventory();
    let names: Vec<&str> = inv.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["px-api", "px-def", "px-side", "px-web"]);

    let web = container(&inv, "px-web");
    assert_eq!(web.id, WEB);
    assert_eq!(web.image, "localhost/netguard-busybox:test");
    assert_eq!(web.labels.get("role").map(String::as_str), Some("web"));
    assert_eq!(
        web.labels
            .get("com.docker.compose.service")
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(web.endpoints.len(), 2);
    let front = &web.endpoints[0];
    assert_eq!(front.network, "px-front");
    assert_eq!(
        front.network_id.as_deref(),
        Some("0b6b08eb9220d947a8d8fc17a3eb89bdd9f419e0bda5163c9bd2e3cd1bcde6a7")
    );
    assert_eq!(front.bridge, "podman1");
    assert_eq!(front.veth.as_deref(), Some("veth0"));
    assert_eq!(front.ipv4, Some("10.89.0.8".parse().unwrap()));
    assert_eq!(front.ipv6, None);
    assert_eq!(front.mac.as_deref(), Some("c6:d7:62:93:1e:96"));
    let v6 = &web.endpoints[1];
    assert_eq!(v6.network, "px-v6");
    assert_eq!(v6.bridge, "podman2");
    assert_eq!(v6.veth.as_deref(), Some("veth1"));
    assert_eq!(v6.ipv4, Some("10.89.7.8".parse().unwrap()));
    assert_eq!(v6.ipv6, Some("fd42:f2::8".parse().unwrap()));
    assert_eq!(v6.mac.as_deref(), Some("0e:65:00:d8:f4:52"));

    let api = container(&inv, "px-api");
    assert_eq!(api.endpoints.len(), 1);
    assert_eq!(
        api.endpoints[0].bridge, "pxbr0",
        "the bridge name asked for"
    );
    assert_eq!(api.endpoints[0].veth.as_deref(), Some("veth2"));
    assert_eq!(api.endpoints[0].ipv4, Some("10.89.1.4".parse().unwrap()));

    let def = container(&inv, "px-def");
    assert_eq!(def.endpoints[0].network, "podman");
    assert_eq!(def.endpoints[0].bridge, "podman0");
    assert_eq!(def.endpoints[0].veth.as_deref(), Some("veth3"));
    assert_eq!(def.endpoints[0].ipv4, Some("10.88.0.5".parse().unwrap()));
    assert_eq!(def.endpoints[0].mac.as_deref(), Some("6e:0b:1b:bf:d8:34"));
    assert!(def.labels.is_empty());

    let bridges: Vec<(&str, Option<&str>)> = inv
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.bridge.as_deref()))
        .collect();
    assert_eq!(
        bridges,
        [
            ("podman", Some("podman0")),
            ("px-front", Some("podman1")),
            ("px-named", Some("pxbr0")),
            ("px-v6", Some("podman2")),
        ]
    );
}

#[test]
fn network_container_shares_the_target_endpoints() {
    let inv = inventory();
    let side = container(&inv, "px-side");
    assert_eq!(side.labels.get("role").map(String::as_str), Some("side"));
    assert_eq!(side.endpoints, container(&inv, "px-web").endpoints);
}

/// Podman's list shows the sharer with the target's endpoints as its own; only the inspect
/// says it shares. Without that, it would be mapped as a container of its own and its veth
/// looked up in its (shared) namespace instead of taken from px-web.
#[test]
fn network_container_is_known_from_the_inspect_not_the_list() {
    let s = scene(false);
    let side = s
        .containers
        .iter()
        .find(|c| c.names.as_deref() == Some(&["/px-side".to_string()]))
        .unwrap();
    let listed = side
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|n| n.len());
    assert_eq!(listed, Some(2), "the list shows px-web's two endpoints");
    // No answer recorded for px-side itself: resolving its own veths would fail the test.
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    assert!(
        container(&inv, "px-side")
            .endpoints
            .iter()
            .all(|e| e.veth.is_some())
    );
}

#[test]
fn host_and_none_are_reported_with_the_reasons_docker_gets() {
    let inv = inventory();
    let got: Vec<(&str, &str)> = inv
        .unisolable
        .iter()
        .map(|u| (u.name.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "px-host");
    assert!(got[0].1.contains("--network host"), "{}", got[0].1);
    assert_eq!(got[1].0, "px-none");
    assert!(got[1].1.contains("--network none"), "{}", got[1].1);
}

#[test]
fn bridge_mismatch_is_still_caught() {
    let s = scene(false);
    let r = resolver().with(API, "px-named", "veth2", "podman1");
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &r);
    assert!(inv.find("px-api").is_none());
    let u = inv
        .unisolable
        .iter()
        .find(|u| u.name == "px-api")
        .expect("reported");
    assert!(
        u.reason.contains("hangs on bridge podman1, not on pxbr0"),
        "{}",
        u.reason
    );
}

/// Podman's compat events (recorded, `tests/fixtures/podman/events.json`): `px-ev` started
/// and exited, `px-cli` connected to and disconnected from `px-named`, `px-ev` removed.
/// Podman makes the container the actor of a network event and gives no `container`
/// attribute, so the daemon must take the actor.
#[test]
fn podman_events_name_the_container_to_look_at() {
    use bollard::models::EventMessage;
    use netguard::docker::events::change_of;
    use netguard::inventory::Change;
    let evs: Vec<EventMessage> = fixture("events.json");
    let ev = "baeb83b9c0970fdce8bed020e7ef66697346b5ac613ca434588460aac59004b4";
    let cli = "90884dc98f550803b2bdfe0e0003aae4f7961d6e942d9a0794c9c8c5c2b3a17a";
    let got: Vec<Option<Change>> = evs.iter().map(change_of).collect();
    assert_eq!(
        got,
        [
            Some(Change::Container(ev.into())),
            Some(Change::Gone(ev.into())),
            Some(Change::Container(cli.into())),
            Some(Change::Container(cli.into())),
            None,
        ]
    );

    // Docker's network events keep naming the container by its attribute, not the actor
    // (the network).
    let docker: EventMessage = serde_json::from_str(
        r#"{"Type":"network","Action":"connect",
            "Actor":{"ID":"53e3b9c918c21da769014f3c09c3b61d6de71580ebbe3c39dc66be408aeba895",
                     "Attributes":{"container":"bda84093dfc06d82839faca8b311726f4275c29a9f2aba4f0e7ad7d74e46f2a5",
                                   "name":"fx-front","type":"bridge"}}}"#,
    )
    .unwrap();
    assert_eq!(
        change_of(&docker),
        Some(Change::Container(
            "bda84093dfc06d82839faca8b311726f4275c29a9f2aba4f0e7ad7d74e46f2a5".into()
        ))
    );
}

/// Podman sends no event when a network is created, so the daemon's copy of the network list
/// can be older than a container; the source notices from the container's own endpoints.
#[test]
fn a_container_on_a_network_missing_from_the_list_is_noticed() {
    let s = scene(false);
    assert!(!names_unknown_network(&s.containers, &s.networks));
    let older: Vec<Network> = s
        .networks
        .iter()
        .filter(|n| n.name.as_deref() != Some("px-named"))
        .cloned()
        .collect();
    let api: Vec<ContainerSummary> = s
        .containers
        .iter()
        .filter(|c| c.id.as_deref() == Some(API))
        .cloned()
        .collect();
    assert!(names_unknown_network(&api, &older));
    let def: Vec<ContainerSummary> = s
        .containers
        .iter()
        .filter(|c| c.id.as_deref() == Some(DEF))
        .cloned()
        .collect();
    assert!(!names_unknown_network(&def, &older));
    // The compat list alone does not know `podman` by that name.
    let compat = scene(true);
    assert!(names_unknown_network(&def, &compat.networks));
}

/// The whole source against the recorded answers served over tcp, as Podman's socket would
/// serve them: it tells Podman from `/version`, makes the one extra libpod call, and maps
/// the same inventory as the mapping alone.
#[tokio::test]
async fn the_source_against_recorded_podman_answers() {
    let text = |name: &str| {
        let path = format!(
            "{}/tests/fixtures/podman/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let mut answers: HashMap<String, String> = HashMap::new();
    answers.insert("/version".into(), text("version.json"));
    answers.insert("/containers/json".into(), text("containers.json"));
    answers.insert("/networks".into(), text("networks.json"));
    answers.insert(
        "/v4.3.1/libpod/networks/json".into(),
        text("libpod-networks.json"),
    );
    for n in NAMES {
        let body = text(&format!("inspect-{n}.json"));
        let v: serde_json::Value = serde_json::from_str(&body).expect("inspect json");
        let id = v["Id"].as_str().expect("id").to_string();
        answers.insert(format!("/containers/{id}/json"), body);
    }
    let (port, served) = fake_daemon::fake_daemon(move |path| match answers.get(path) {
        Some(body) => (200, body.clone()),
        None => (
            404,
            format!(r#"{{"message":"no answer recorded for {path}"}}"#),
        ),
    });
    let src = netguard::docker::DockerSource::connect(Some(&format!("tcp://127.0.0.1:{port}")))
        .expect("connect")
        .with_resolver(std::sync::Arc::new(resolver()));
    assert_eq!(
        src.engine(),
        netguard::inventory::Engine::Docker,
        "nothing is known before /version"
    );
    let inv = src
        .inventory()
        .await
        .expect("inventory from Podman's answers");
    assert_eq!(src.engine(), netguard::inventory::Engine::Podman);
    assert_eq!(inv.engine, netguard::inventory::Engine::Podman);
    let mapped = Inventory {
        engine: netguard::inventory::Engine::Podman,
        ..inventory()
    };
    assert_eq!(inv, mapped, "the source maps what the mapping maps");
    let bridges: Vec<&str> = inv
        .containers
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.bridge.as_str()))
        .collect();
    assert!(
        bridges.contains(&"pxbr0") && bridges.contains(&"podman0"),
        "{bridges:?}"
    );
    // version, the two lists, the libpod list, one inspect per container (Podman's list
    // carries no network mode); the fake daemon agrees with the source's counter.
    let want = 4 + NAMES.len() as u64;
    assert_eq!(src.api_calls(), want);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), want);
}

/// No recorded Podman container publishes a port (and no Podman is at hand to record one):
/// px-web's recorded inspect with its `NetworkSettings.Ports` replaced by the compat shape
/// Podman writes, `HostIp` empty for every address. The recorded ones carry none.
#[test]
fn published_ports_come_from_the_compat_inspect() {
    use netguard::inventory::{PortProto, PublishedPort};
    let inv = inventory();
    for c in &inv.containers {
        assert!(c.published.is_empty(), "{}: {:?}", c.name, c.published);
    }
    let mut s = scene(false);
    let mut web = serde_json::to_value(&s.inspected[WEB]).expect("json");
    web["NetworkSettings"]["Ports"] = serde_json::json!({
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "10.89.0.1", "HostPort": "5353"}],
        "9000/tcp": null,
        "bogus/tcp": [{"HostIp": "", "HostPort": "1"}]
    });
    s.inspected.insert(
        WEB.to_string(),
        serde_json::from_value(web).expect("inspect"),
    );
    let inv = map_inventory(&s.containers, &s.networks, &s.inspected, &resolver());
    assert_eq!(
        container(&inv, "px-web").published,
        vec![
            PublishedPort {
                proto: PortProto::Tcp,
                host_port: 8080,
                container_port: 80,
                host_ip: None,
            },
            PublishedPort {
                proto: PortProto::Udp,
                host_port: 5353,
                container_port: 53,
                host_ip: Some("10.89.0.1".parse().expect("ip")),
            },
        ]
    );
}
