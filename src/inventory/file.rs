//! `--inventory FILE`: containers described in TOML instead of asked from Docker.

use super::{Container, Endpoint, Inventory, Network};
use crate::loc::Loc;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum InventoryFileError {
    #[error("{path}: cannot read inventory: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{loc}: {message}")]
    Invalid { loc: Loc, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    /// `docker` (default) or `podman`: whose bridge names are judged while unknown.
    #[serde(default)]
    engine: super::Engine,
    #[serde(default)]
    container: Vec<Spanned<FileContainer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContainer {
    name: Spanned<String>,
    id: Option<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    endpoint: Vec<Spanned<FileEndpoint>>,
    /// `ip netns` name of the container's network namespace (for `netguard verify`).
    netns: Option<Spanned<String>>,
    /// A process of the container, whose namespace is `/proc/PID/ns/net` (for `verify`).
    pid: Option<Spanned<u32>>,
    /// Published ports in Docker's `-p` syntax: `"127.0.0.1:8080:80/tcp"`.
    #[serde(default)]
    published: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    network: String,
    network_id: Option<String>,
    bridge: Spanned<String>,
    veth: Option<Spanned<String>>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    mac: Option<Spanned<String>>,
}

/// Reads and validates an inventory file.
pub fn load_inventory_file(path: &Path) -> Result<Inventory, InventoryFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_inventory(path, &text)
}

/// Parses inventory text; `path` is only used to name locations in errors.
pub fn parse_inventory(path: &Path, text: &str) -> Result<Inventory, InventoryFileError> {
    let invalid =
        |span: Option<std::ops::Range<usize>>, message: String| InventoryFileError::Invalid {
            loc: Loc::of_span(path, text, span),
            message,
        };
    let model: FileModel =
        toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_string()))?;

    let mut inv = Inventory {
        engine: model.engine,
        ..Inventory::default()
    };
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut veths = BTreeSet::new();
    let mut networks: BTreeMap<String, String> = BTreeMap::new();
    for c in model.container {
        let span = c.span();
        let c = c.into_inner();
        let name = c.name.get_ref().clone();
        if name.is_empty() {
            return Err(invalid(
                Some(c.name.span()),
                "container name must not be empty".into(),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(
                Some(c.name.span()),
                format!("duplicate container name {name:?}"),
            ));
        }
        let id = c.id.unwrap_or_else(|| name.clone());
        if !ids.insert(id.clone()) {
            return Err(invalid(
                Some(span),
                format!("duplicate container id {id:?}"),
            ));
        }
        let mut endpoints = Vec::new();
        for ep in c.endpoint {
            let ep_span = ep.span();
            let ep = ep.into_inner();
            if ep.ipv4.is_none() && ep.ipv6.is_none() {
                return Err(invalid(
                    Some(ep_span),
                    "endpoint needs at least one of `ipv4` / `ipv6`".into(),
                ));
            }
            check_ifname(ep.bridge.get_ref())
                .map_err(|m| invalid(Some(ep.bridge.span()), format!("bridge: {m}")))?;
            let veth = match ep.veth {
                Some(v) => {
                    check_ifname(v.get_ref())
                        .map_err(|m| invalid(Some(v.span()), format!("veth: {m}")))?;
                    if !veths.insert(v.get_ref().clone()) {
                        return Err(invalid(
                            Some(v.span()),
                            format!("veth {:?} is used by two endpoints", v.get_ref()),
                        ));
                    }
                    Some(v.into_inner())
                }
                None => None,
            };
            let mac = match ep.mac {
                Some(m) => {
                    let parsed = m
                        .get_ref()
                        .parse::<super::Mac>()
                        .map_err(|e| invalid(Some(m.span()), format!("mac: {e}")))?;
                    if !parsed.is_ownable() {
                        return Err(invalid(
                            Some(m.span()),
                            format!("mac: {parsed} is not a unicast address"),
                        ));
                    }
                    Some(parsed.to_string())
                }
                None => None,
            };
            let bridge = ep.bridge.into_inner();
            if let Some(prev) = networks.get(&ep.network)
                && *prev != bridge
            {
                return Err(invalid(
                    Some(ep_span),
                    format!(
                        "network {:?} is on bridge {prev:?} elsewhere, not {bridge:?}",
                        ep.network
                    ),
                ));
            }
            networks.insert(ep.network.clone(), bridge.clone());
            endpoints.push(Endpoint {
                network: ep.network,
                network_id: ep.network_id,
                bridge,
                veth,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
                mac,
            });
        }
        match (c.netns, c.pid) {
            (Some(_), Some(p)) => {
                return Err(invalid(
                    Some(p.span()),
                    "give `netns` or `pid`, not both".into(),
                ));
            }
            (Some(n), None) => {
                let (span, n) = (n.span(), n.into_inner());
                if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                    return Err(invalid(
                        Some(span),
                        format!("netns: {n:?} is not a namespace name of `ip netns` (no '/')"),
                    ));
                }
                inv.netns.insert(id.clone(), super::NetnsRef::Named(n));
            }
            (None, Some(p)) => {
                if *p.get_ref() == 0 {
                    return Err(invalid(
                        Some(p.span()),
                        "pid: must be a process id above 0".into(),
                    ));
                }
                inv.netns
                    .insert(id.clone(), super::NetnsRef::Pid(p.into_inner()));
            }
            (None, None) => {}
        }
        let mut published = Vec::new();
        for p in &c.published {
            let port = p
                .get_ref()
                .parse::<super::PublishedPort>()
                .map_err(|m| invalid(Some(p.span()), format!("published: {m}")))?;
            published.push(port);
        }
        published.sort();
        published.dedup();
        inv.containers.push(Container {
            published,
            id,
            name,
            image: c.image,
            labels: c.labels,
            endpoints,
        });
    }
    inv.networks = networks
        .into_iter()
        .map(|(name, bridge)| Network {
            name,
            id: None,
            driver: "bridge".into(),
            bridge: Some(bridge),
        })
        .collect();
    inv.normalize();
    Ok(inv)
}

/// Linux interface names: 1..=15 bytes, no '/', no whitespace, not "." or "..", and
/// only the characters netguard can match exactly (`super::exact_ifname`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "{name:?} is not a valid interface name (1 to 15 bytes)"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if !super::exact_ifname(name) {
        return Err(format!(
            "{name:?}: netguard takes interface names of letters, digits, '-', '_' and '.' \
             (nftables reads '*' as a wildcard and '@' or '$' as references)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, String> {
        parse_inventory(Path::new("inv.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_container_with_two_endpoints() {
        let inv = parse(
            r#"
[[container]]
name = "web-1"
image = "nginx:1.27"
labels = { role = "web" }
[[container.endpoint]]
network = "front"
bridge = "br-front"
veth = "vethA1"
ipv4 = "10.99.0.11"
ipv6 = "fd99::11"
[[container.endpoint]]
network = "back"
bridge = "br-back"
veth = "vethA2"
ipv4 = "10.98.0.11"
"#,
        )
        .unwrap();
        assert_eq!(inv.containers.len(), 1);
        let c = &inv.containers[0];
        assert_eq!(c.id, "web-1");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].network, "back");
        assert_eq!(inv.networks.len(), 2);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("[[container]]\nname = \"a\"\nfoo = 1\n").unwrap_err();
        assert!(e.starts_with("inv.toml:3:1:"), "{e}");
        let e = parse("[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"b\"\n").unwrap_err();
        assert!(e.starts_with("inv.toml:3:1:") && e.contains("ipv4"), "{e}");
        let e = parse("[[container]]\nname = \"a\"\n[[container]]\nname = \"a\"\n").unwrap_err();
        assert!(
            e.starts_with("inv.toml:4:8:") && e.contains("duplicate"),
            "{e}"
        );
        let e = parse("[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"b\"\nipv4 = \"10.0.0.300\"\n").unwrap_err();
        assert!(e.starts_with("inv.toml:6:8:"), "{e}");
        let e = parse("[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"a/b\"\nipv4 = \"10.0.0.3\"\n").unwrap_err();
        assert!(e.starts_with("inv.toml:5:10:"), "{e}");
        let ep = "[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"b\"\nipv4 = \"10.0.0.3\"\n";
        let e = parse(&format!("{ep}mac = \"02:42:0a\"\n")).unwrap_err();
        assert!(e.starts_with("inv.toml:7:7:") && e.contains("MAC"), "{e}");
        let e = parse(&format!("{ep}mac = \"ff:ff:ff:ff:ff:ff\"\n")).unwrap_err();
        assert!(
            e.starts_with("inv.toml:7:7:") && e.contains("unicast"),
            "{e}"
        );
        let inv = parse_inventory(
            Path::new("inv.toml"),
            &format!("{ep}mac = \"02:42:0A:00:00:03\"\n"),
        )
        .unwrap();
        assert_eq!(
            inv.containers[0].endpoints[0].mac.as_deref(),
            Some("02:42:0a:00:00:03")
        );
    }

    #[test]
    fn published_ports_parse_with_locations() {
        use crate::inventory::{PortProto, PublishedPort};
        let ep = "[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"b\"\nipv4 = \"10.0.0.3\"\n";
        let inv = parse(&format!(
            "[[container]]\nname = \"a\"\npublished = [\"15432:5432/tcp\", \"127.0.0.1:8080:80/udp\", \"[2001:db8::1]:8443:443\", \"0.0.0.0:15432:5432\"]\n{ep}"
        ))
        .unwrap();
        let got: Vec<String> = inv.containers[0]
            .published
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "[2001:db8::1]:8443:443/tcp",
                "15432:5432/tcp",
                "127.0.0.1:8080:80/udp"
            ],
            "0.0.0.0 is the wildcard, merged with the plain form"
        );
        assert_eq!(
            inv.containers[0].published[1],
            PublishedPort {
                proto: PortProto::Tcp,
                host_port: 15432,
                container_port: 5432,
                host_ip: None
            }
        );
        for (bad, col, what) in [
            ("\"5432\"", 14, "HOST_PORT:CONTAINER_PORT"),
            ("\"x:5432/tcp\"", 14, "host port"),
            ("\"1:70000/tcp\"", 14, "container port"),
            ("\"0:80/tcp\"", 14, "host port"),
            ("\"1:80/icmp\"", 14, "protocol"),
            ("\"10.0.0.300:1:80\"", 14, "IP address"),
            ("\"2001:db8::1:1:80\"", 14, "brackets"),
            ("\"[::1:1:80\"", 14, "']'"),
            ("\"1-9:80/tcp\"", 14, "host port"),
        ] {
            let e = parse(&format!(
                "[[container]]\nname = \"a\"\npublished = [{bad}]\n{ep}"
            ))
            .unwrap_err();
            assert!(
                e.starts_with(&format!("inv.toml:3:{col}:")) && e.contains(what),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn published_port_display_round_trips() {
        for s in [
            "15432:5432/tcp",
            "127.0.0.1:8080:80/udp",
            "[2001:db8::1]:8443:443/sctp",
        ] {
            let p: crate::inventory::PublishedPort = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn netns_or_pid_names_the_namespace() {
        use crate::inventory::NetnsRef;
        let ep = "[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"b\"\nipv4 = \"10.0.0.3\"\n";
        let inv = parse(&format!(
            "[[container]]\nname = \"a\"\nnetns = \"ng-a\"\n{ep}[[container]]\nname = \"b\"\npid = 42\n"
        ))
        .unwrap();
        assert_eq!(inv.netns.get("a"), Some(&NetnsRef::Named("ng-a".into())));
        assert_eq!(inv.netns.get("b"), Some(&NetnsRef::Pid(42)));
        assert_eq!(
            inv.netns["a"].path(),
            std::path::PathBuf::from("/run/netns/ng-a")
        );
        assert_eq!(
            inv.netns["b"].path(),
            std::path::PathBuf::from("/proc/42/ns/net")
        );
        let e = parse("[[container]]\nname = \"a\"\nnetns = \"../x\"\n").unwrap_err();
        assert!(
            e.starts_with("inv.toml:3:9:") && e.contains("ip netns"),
            "{e}"
        );
        let e = parse("[[container]]\nname = \"a\"\nnetns = \"x\"\npid = 3\n").unwrap_err();
        assert!(
            e.starts_with("inv.toml:4:7:") && e.contains("not both"),
            "{e}"
        );
        let e = parse("[[container]]\nname = \"a\"\npid = 0\n").unwrap_err();
        assert!(e.starts_with("inv.toml:3:7:"), "{e}");
    }

    #[test]
    fn engine_defaults_to_docker_and_is_checked() {
        use crate::inventory::Engine;
        assert_eq!(parse("").unwrap().engine, Engine::Docker);
        assert_eq!(
            parse("engine = \"podman\"\n").unwrap().engine,
            Engine::Podman
        );
        let e = parse("\nengine = \"lxc\"\n").unwrap_err();
        assert!(e.starts_with("inv.toml:2:10:"), "{e}");
        assert!(e.contains("docker") && e.contains("podman"), "{e}");
    }

    #[test]
    fn names_nft_would_read_as_patterns_are_rejected_where_they_stand() {
        for (bridge, veth) in [("br*", "vethA"), ("@br", "vethA"), ("br0", "ve$th")] {
            let text = format!(
                "[[container]]\nname = \"a\"\n[[container.endpoint]]\nnetwork = \"n\"\n\
                 bridge = \"{bridge}\"\nveth = \"{veth}\"\nipv4 = \"10.0.0.3\"\n"
            );
            let e = parse(&text).unwrap_err();
            let at = if bridge == "br0" {
                "inv.toml:6:8:"
            } else {
                "inv.toml:5:10:"
            };
            assert!(e.starts_with(at), "{e}");
            assert!(e.contains("letters, digits, '-', '_' and '.'"), "{e}");
        }
        assert!(check_ifname("br-0a1b2c3d4e5f").is_ok());
        assert!(check_ifname("veth1a2.b_c").is_ok());
    }
}
