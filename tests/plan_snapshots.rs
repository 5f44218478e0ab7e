//! Snapshots of the plan and of the nft batch that creates it from nothing.
//! The `.snap` files under `tests/snapshots/` are the reviewed spec: read them, don't just
//! accept them.

use netguard::inventory::{Inventory, Unisolable, parse_inventory};
use netguard::nft::{LiveState, diff};
use netguard::plan::ruleset::Family;
use netguard::plan::{Plan, plan};
use netguard::policy::{Policy, parse_policy};
use std::path::Path;

fn policy(name: &str, text: &str) -> Policy {
    parse_policy(Path::new(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn inventory(text: &str) -> Inventory {
    parse_inventory(Path::new("inventory.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn empty_live() -> LiveState {
    [(Family::Inet, None), (Family::Bridge, None)].into()
}

fn batch_json(p: &Plan) -> serde_json::Value {
    let changes = diff(&p.ruleset, &empty_live());
    serde_json::to_value(changes.batch()).expect("batch serialises")
}

/// The same containers in another order (and endpoints reversed), then normalised.
fn shuffled(inv: &Inventory) -> Inventory {
    let mut s = inv.clone();
    s.containers.reverse();
    let n = s.containers.len();
    s.containers.rotate_left(n / 3);
    for c in &mut s.containers {
        c.endpoints.reverse();
    }
    s.networks.reverse();
    s.normalize();
    s
}

const EXAMPLE_POLICY: &str = include_str!("../policy.example.toml");

/// A web shop on three networks: shop-front and shop-back are managed by the example
/// policy (`networks = ["shop-*"]`), `legacy` is not.
const SHOP_INVENTORY: &str = r#"
[[container]]
name = "web-1"
id = "a1000000000000000000000000000000000000000000000000000000000000001"
image = "nginx:1.27"
labels = { role = "web" }
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-web1"
ipv4 = "10.10.0.11"
mac = "02:42:0a:0a:00:0b"
ipv6 = "fd10::11"

[[container]]
name = "web-2"
image = "nginx:1.27"
labels = { role = "web", "com.docker.compose.project" = "shop" }
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-web2"
ipv4 = "10.10.0.12"
mac = "02:42:0a:0a:00:0c"

# api by name; on both shop networks
[[container]]
name = "api-1"
image = "shop/api:2.3"
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-api1f"
ipv4 = "10.10.0.21"
mac = "02:42:0a:0a:00:15"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-api1b"
ipv4 = "10.20.0.21"
mac = "02:42:0a:14:00:15"
ipv6 = "fd20::21"

# api by compose label
[[container]]
name = "shop_api_2"
image = "shop/api:2.3"
labels = { "com.docker.compose.service" = "api", "com.docker.compose.project" = "shop" }
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-api2"
ipv4 = "10.20.0.22"
mac = "02:42:0a:14:00:16"

[[container]]
name = "pg-primary"
image = "postgres:16"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-pg1"
ipv4 = "10.20.0.31"
mac = "02:42:0a:14:00:1f"

[[container]]
name = "pg-replica"
image = "postgres:16.4"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-pg2"
ipv4 = "10.20.0.32"
mac = "02:42:0a:14:00:20"

# postgres, but not on shop-back: the db selector needs both keys, so it is in no group.
[[container]]
name = "pg-stray"
image = "postgres:16"
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-pgx"
ipv4 = "10.10.0.33"
mac = "02:42:0a:0a:00:21"

# veth not resolved (yet): fail closed, not admitted.
[[container]]
name = "redis"
image = "redis:7.2"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
ipv4 = "10.20.0.41"
mac = "02:42:0a:14:00:29"

# label present with an empty value: "*" means present.
[[container]]
name = "prometheus"
image = "prom/prometheus:v2"
labels = { "prometheus.io/server" = "" }
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-prom-f"
ipv4 = "10.10.0.90"
mac = "02:42:0a:0a:00:5a"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-prom-b"
ipv4 = "10.20.0.90"
mac = "02:42:0a:14:00:5a"
[[container.endpoint]]
network = "legacy"
bridge = "br-legacy"
veth = "veth-prom-l"
ipv4 = "172.30.0.90"
mac = "02:42:ac:1e:00:5a"

[[container]]
name = "grafana"
image = "grafana/grafana:11"
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-graf"
ipv4 = "10.10.0.91"
mac = "02:42:0a:0a:00:5b"

# two endpoints claim one address on one bridge: neither is admitted.
[[container]]
name = "batch-a"
image = "shop/batch:1"
labels = { role = "web" }
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-batcha"
ipv4 = "10.20.0.50"
mac = "02:42:0a:14:00:32"

[[container]]
name = "batch-b"
image = "shop/batch:1"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-batchb"
ipv4 = "10.20.0.50"
mac = "02:42:0a:14:00:32"

# only on an unmanaged network: not managed, untouched.
[[container]]
name = "legacy-app"
image = "legacy:0.9"
labels = { role = "web" }
[[container.endpoint]]
network = "legacy"
bridge = "br-legacy"
veth = "veth-legacy"
ipv4 = "172.30.0.10"
mac = "02:42:ac:1e:00:0a"
"#;

fn shop_inventory() -> Inventory {
    let mut inv = inventory(SHOP_INVENTORY);
    inv.unisolable.push(Unisolable {
        id: "hostnet0000".into(),
        name: "node-exporter".into(),
        reason: "network mode host".into(),
    });
    inv.normalize();
    inv
}

/// Defaults (all networks, anti-spoofing on... switched off here), `*` on both sides,
/// lists of groups, many ports of several protocols in one entry, `within`.
const LAB_POLICY: &str = r#"
[settings]
anti_spoofing = false

[groups.frontend]
match = [ { name = "fe-*" }, { label = { tier = "front" } } ]

[groups.backend]
match = { label = { tier = "back", team = "*" } }

[groups.infra]
match = { network = "infra" }

[[allow]]
from = "*"
to = "infra"
ports = ["53/udp", "53/tcp", "icmp"]
comment = "everyone may resolve names and ping infra"

[[allow]]
from = ["frontend", "infra"]
to = "backend"
ports = ["443/tcp", "80/tcp", "8000-8100/tcp", "80/tcp", "5000-5001/udp", "icmp"]

[[allow]]
within = "backend"

[[allow]]
from = "*"
to = "*"
ports = ["icmp"]
comment = "ping is fine"
"#;

const LAB_INVENTORY: &str = r#"
[[container]]
name = "fe-1"
[[container.endpoint]]
network = "app"
bridge = "br-app"
veth = "veth-fe1"
ipv4 = "172.20.0.2"
ipv6 = "fd00:20::2"

[[container]]
name = "shop"
labels = { tier = "front" }
[[container.endpoint]]
network = "app"
bridge = "br-app"
ipv4 = "172.20.0.3"

[[container]]
name = "orders"
labels = { tier = "back", team = "payments" }
[[container.endpoint]]
network = "app"
bridge = "br-app"
veth = "veth-orders"
ipv6 = "fd00:20::4"

[[container]]
name = "tierless"
labels = { tier = "back" }
[[container.endpoint]]
network = "app"
bridge = "br-app"
veth = "veth-tl"
ipv4 = "172.20.0.5"

[[container]]
name = "dns"
[[container.endpoint]]
network = "infra"
bridge = "br-infra"
veth = "veth-dns-i"
ipv4 = "172.21.0.53"
[[container.endpoint]]
network = "app"
bridge = "br-app"
veth = "veth-dns-a"
ipv4 = "172.20.0.53"
"#;

/// Nothing allowed, one group nobody matches, logging on.
const LOCKDOWN_POLICY: &str = r#"
[settings]
networks = ["prod-?"]
log_denied = true

[groups.nobody]
match = { image = "does-not-exist" }
"#;

const LOCKDOWN_INVENTORY: &str = r#"
[[container]]
name = "p1"
[[container.endpoint]]
network = "prod-a"
bridge = "br-prod-a"
veth = "veth-p1"
ipv4 = "10.50.0.2"

[[container]]
name = "p2"
[[container.endpoint]]
network = "prod-a"
bridge = "br-prod-a"
veth = "veth-p2"
ipv4 = "10.50.0.3"

[[container]]
name = "d1"
[[container.endpoint]]
network = "prod-aa"
bridge = "br-prod-aa"
veth = "veth-d1"
ipv4 = "10.51.0.2"
"#;

#[test]
fn example_policy_plan() {
    let p = policy("policy.example.toml", EXAMPLE_POLICY);
    let inv = shop_inventory();
    let planned = plan(&p, &inv);
    insta::assert_json_snapshot!("example_plan", planned);
    insta::assert_json_snapshot!("example_batch", batch_json(&planned));
    // The hold chain's queue rule is not in the libnftables batch: it is appended over
    // nfnetlink after it (`nft::netlink::append_queue_rules`).
    let changes = diff(&planned.ruleset, &empty_live());
    let queued: Vec<String> = changes
        .queue_rules()
        .iter()
        .map(|(f, chain, r)| format!("{} {chain}: {}", f.as_str(), r.comment))
        .collect();
    assert_eq!(queued, ["inet hold: held until admitted"]);
    let batch = serde_json::to_string(&changes.batch()).expect("batch");
    assert!(!batch.contains("held until admitted") && !batch.contains("queue"));
}

/// The edges closed: host, egress and ingress deny, with one line of each kind open.
const EDGES_POLICY: &str = r#"
[settings]
networks = ["shop-*"]
host = "deny"
egress = "deny"
ingress = "deny"

[groups.web]
match = { label = { role = "web" } }

[groups.monitoring]
match = { name = "prom*" }

[[allow]]
from = "monitoring"
to = "host"
ports = ["9100/tcp", "icmp"]

[[allow]]
from = "web"
to = ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
ports = ["443/tcp", "8000-8100/tcp"]

[[allow]]
from = "*"
to = "world"
ports = ["53/udp"]

[[allow]]
from = ["198.51.100.0/24"]
to = "web"
ports = ["443/tcp"]

[[allow]]
from = "world"
to = "web"
ports = ["80/tcp"]
"#;

#[test]
fn edges_policy_plan() {
    let p = policy("edges.toml", EDGES_POLICY);
    let planned = plan(&p, &shop_inventory());
    insta::assert_json_snapshot!("edges_plan", planned.ruleset);
    insta::assert_json_snapshot!("edges_batch", batch_json(&planned));
}

#[test]
fn lab_policy_plan() {
    let p = policy("lab.toml", LAB_POLICY);
    let planned = plan(&p, &inventory(LAB_INVENTORY));
    insta::assert_json_snapshot!("lab_plan", planned);
    insta::assert_json_snapshot!("lab_batch", batch_json(&planned));
}

#[test]
fn lockdown_policy_plan() {
    let p = policy("lockdown.toml", LOCKDOWN_POLICY);
    let planned = plan(&p, &inventory(LOCKDOWN_INVENTORY));
    insta::assert_json_snapshot!("lockdown_plan", planned);
    insta::assert_json_snapshot!("lockdown_batch", batch_json(&planned));
}

#[test]
fn plan_is_deterministic() {
    for (name, pol, inv) in [
        ("policy.example.toml", EXAMPLE_POLICY, shop_inventory()),
        ("lab.toml", LAB_POLICY, inventory(LAB_INVENTORY)),
        (
            "lockdown.toml",
            LOCKDOWN_POLICY,
            inventory(LOCKDOWN_INVENTORY),
        ),
    ] {
        let p = policy(name, pol);
        let a = plan(&p, &inv);
        let s = shuffled(&inv);
        assert_ne!(
            s.containers.iter().map(|c| &c.name).collect::<Vec<_>>(),
            Vec::<&String>::new()
        );
        assert_eq!(a, plan(&p, &s), "{name}: order of the inventory leaks");
        assert_eq!(a, plan(&p, &inv), "{name}: same input, different plan");
        assert_eq!(batch_json(&a), batch_json(&plan(&p, &s)));
    }
}

#[test]
fn shuffled_inventory_really_differs_before_normalising() {
    let inv = shop_inventory();
    let mut s = inv.clone();
    s.containers.reverse();
    assert_ne!(inv, s);
    s.normalize();
    assert_eq!(inv, s);
}

/// `--network container:X` shares X's endpoint (same veth, same addresses, same MAC): both
/// are admitted, the sharer's groups add X's addresses to their sets, and X's MAC is bound
/// once, to X's veth.
#[test]
fn shared_network_namespace_is_one_endpoint_not_a_conflict() {
    let policy = netguard::policy::parse_policy(
        std::path::Path::new("p.toml"),
        "[groups.app]\nmatch = { name = \"app\" }\n[groups.sidecar]\nmatch = { name = \"sidecar\" }\n",
    )
    .expect("policy");
    // An inventory file rejects one veth used twice, so the sharer is built by hand, as
    // the Docker source does.
    let mut inv = netguard::inventory::parse_inventory(
        std::path::Path::new("i.toml"),
        "[[container]]\nname = \"app\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vethapp\"\nipv4 = \"10.5.0.2\"\nmac = \"02:42:0a:05:00:02\"\n",
    )
    .expect("inventory");
    let mut sidecar = inv.containers[0].clone();
    sidecar.name = "sidecar".into();
    sidecar.id = "sidecar".into();
    inv.containers.push(sidecar);
    inv.normalize();
    let p = netguard::plan::plan(&policy, &inv);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(
        p.containers
            .iter()
            .all(|c| c.endpoints.iter().all(|e| e.admitted))
    );
    let inet = p
        .ruleset
        .table(netguard::plan::ruleset::Family::Inet)
        .expect("inet");
    for g in ["g_app_4", "g_sidecar_4"] {
        assert_eq!(inet.set(g).map(|s| s.elements.len()), Some(1), "{g}");
    }
    let bridge = p
        .ruleset
        .table(netguard::plan::ruleset::Family::Bridge)
        .expect("bridge");
    let mac: netguard::inventory::Mac = "02:42:0a:05:00:02".parse().expect("mac");
    assert_eq!(
        bridge
            .set("bind_mac")
            .map(|s| s.elements.iter().cloned().collect::<Vec<_>>()),
        Some(vec![netguard::plan::ruleset::Elem::IfnameMac(
            "vethapp".into(),
            mac
        )])
    );
    assert!(
        p.containers
            .iter()
            .all(|c| c.endpoints.iter().all(|e| e.mac_binding))
    );
}

/// Names from Docker are not checked like an inventory file's: the plan itself keeps any
/// name nftables would read as a pattern out of the ruleset.
#[test]
fn interface_names_nft_cannot_match_exactly_stay_out_of_the_ruleset() {
    let policy = policy("p.toml", "[groups.app]\nmatch = { name = \"*\" }\n");
    let mut inv = inventory(
        "[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vetha\"\nipv4 = \"10.5.0.2\"\n\
         [[container]]\nname = \"b\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vethb\"\nipv4 = \"10.5.0.3\"\n\
         [[container]]\nname = \"c\"\n[[container.endpoint]]\nnetwork = \"odd\"\nbridge = \"br-odd\"\nveth = \"vethc\"\nipv4 = \"10.6.0.2\"\n",
    );
    // As a Docker host could report them (a renamed veth, a network's bridge option).
    for c in &mut inv.containers {
        for ep in &mut c.endpoints {
            match c.name.as_str() {
                "b" => ep.veth = Some("veth*".into()),
                "c" => ep.bridge = "br@odd".into(),
                _ => {}
            }
        }
    }
    for n in &mut inv.networks {
        if n.name == "odd" {
            n.bridge = Some("br@odd".into());
        }
    }
    let p = plan(&policy, &inv);
    let ep = |name: &str| {
        p.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.endpoints[0].clone())
            .expect(name)
    };
    assert!(ep("a").admitted);
    let b = ep("b");
    assert!(!b.admitted && b.managed, "{b:?}");
    assert!(
        b.reason.as_deref().is_some_and(|r| r.contains("\"veth*\"")),
        "{b:?}"
    );
    assert!(!ep("c").managed);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("network odd") && w.contains("left unmanaged")),
        "{:?}",
        p.warnings
    );
    let text = serde_json::to_string(&batch_json(&p)).expect("json");
    assert!(
        !text.contains("veth*") && !text.contains("br@odd"),
        "{text}"
    );
}
