//! Published ports from Docker's (and Podman's compat) inspect: `NetworkSettings.Ports`.
//!
//! The map is `"5432/tcp": [{"HostIp": "0.0.0.0", "HostPort": "15432"}, ...]`; a `null`
//! value is a port that is exposed but not published. Only the running state counts:
//! `HostConfig.PortBindings` (what was asked at create) is not read, because nothing listens
//! before `start` and the `start` refresh brings the ports Docker actually bound (a random
//! host port is only known then). Anything odd is skipped with a logged reason.

use crate::inventory::{PortProto, PublishedPort};
use bollard::models::{ContainerInspectResponse, PortMap};
use std::net::IpAddr;

/// The published ports of an inspected container, sorted, without duplicates.
pub fn published_ports(id: &str, insp: Option<&ContainerInspectResponse>) -> Vec<PublishedPort> {
    insp.and_then(|i| i.network_settings.as_ref())
        .and_then(|n| n.ports.as_ref())
        .map(|m| from_port_map(id, m))
        .unwrap_or_default()
}

/// Reads a `PortMap`; the wildcard addresses (`""`, `0.0.0.0`, `::`) become `host_ip: None`.
pub fn from_port_map(id: &str, map: &PortMap) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for (key, bindings) in map {
        let Some(bindings) = bindings else { continue };
        let (container_port, proto) = match parse_key(key) {
            Ok(k) => k,
            Err(why) => {
                tracing::warn!(container = %id, port = %key, "published port skipped: {why}");
                continue;
            }
        };
        for b in bindings {
            let host_port = b.host_port.as_deref().unwrap_or("");
            let Ok(host_port) = host_port.parse::<u16>() else {
                tracing::warn!(container = %id, port = %key, host_port = %host_port,
                    "published port skipped: host port is not a number in 1-65535");
                continue;
            };
            if host_port == 0 {
                tracing::warn!(container = %id, port = %key, "published port skipped: host port 0");
                continue;
            }
            let host_ip = match parse_host_ip(b.host_ip.as_deref().unwrap_or("")) {
                Ok(ip) => ip,
                Err(why) => {
                    tracing::warn!(container = %id, port = %key, "published port skipped: {why}");
                    continue;
                }
            };
            out.push(PublishedPort {
                proto,
                host_port,
                container_port,
                host_ip,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `"5432/tcp"` → (5432, tcp); a key without a protocol is TCP, as Docker reads it.
fn parse_key(key: &str) -> Result<(u16, PortProto), String> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto {
        "tcp" => PortProto::Tcp,
        "udp" => PortProto::Udp,
        "sctp" => PortProto::Sctp,
        other => return Err(format!("unknown protocol {other:?}")),
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((p, proto)),
        _ => Err(format!(
            "container port {port:?} is not a number in 1-65535"
        )),
    }
}

/// Docker writes `0.0.0.0` and `::` (and `""` in older answers) for "every address"; the
/// inventory says that with `None`. A bracketed IPv6 (`[::1]`) is accepted too.
fn parse_host_ip(s: &str) -> Result<Option<IpAddr>, String> {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    if s.is_empty() {
        return Ok(None);
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("host address {s:?} is not an IP address"))?;
    Ok((!ip.is_unspecified()).then_some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;

    fn bind(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: Some(ip.to_string()),
            host_port: Some(port.to_string()),
        }
    }

    #[test]
    fn wildcards_merge_into_one_any_address_entry() {
        let mut m = PortMap::new();
        m.insert(
            "5432/tcp".into(),
            Some(vec![bind("0.0.0.0", "15432"), bind("::", "15432")]),
        );
        m.insert("53/udp".into(), Some(vec![bind("", "1053")]));
        m.insert("80/tcp".into(), None);
        let got = from_port_map("x", &m);
        assert_eq!(
            got,
            vec![
                PublishedPort {
                    proto: PortProto::Tcp,
                    host_port: 15432,
                    container_port: 5432,
                    host_ip: None
                },
                PublishedPort {
                    proto: PortProto::Udp,
                    host_port: 1053,
                    container_port: 53,
                    host_ip: None
                },
            ]
        );
    }

    #[test]
    fn specific_addresses_are_kept() {
        let mut m = PortMap::new();
        m.insert(
            "443/tcp".into(),
            Some(vec![bind("127.0.0.1", "8443"), bind("2001:db8::1", "8443")]),
        );
        let got = from_port_map("x", &m);
        let ips: Vec<_> = got
            .iter()
            .map(|p| p.host_ip.map(|i| i.to_string()))
            .collect();
        assert_eq!(
            ips,
            vec![Some("127.0.0.1".into()), Some("2001:db8::1".into())]
        );
    }

    #[test]
    fn hostile_values_are_skipped_not_fatal() {
        let mut m = PortMap::new();
        m.insert("abc/tcp".into(), Some(vec![bind("", "1")]));
        m.insert("1-9/tcp".into(), Some(vec![bind("", "1")]));
        m.insert("70000/tcp".into(), Some(vec![bind("", "1")]));
        m.insert("0/tcp".into(), Some(vec![bind("", "1")]));
        m.insert("22/icmp".into(), Some(vec![bind("", "1")]));
        m.insert(
            "80/tcp".into(),
            Some(vec![
                bind("", "8000-8010"),
                bind("", ""),
                bind("", "0"),
                bind("", "-1"),
                bind("not-an-ip", "8080"),
                PortBinding {
                    host_ip: None,
                    host_port: None,
                },
                bind("10.0.0.1", "8081"),
            ]),
        );
        let got = from_port_map("x", &m);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].host_port, 8081);
        assert_eq!(got[0].container_port, 80);
    }

    #[test]
    fn key_without_protocol_is_tcp() {
        assert_eq!(parse_key("8080"), Ok((8080, PortProto::Tcp)));
        assert_eq!(parse_host_ip("[::1]"), Ok(Some("::1".parse().unwrap())));
        assert_eq!(parse_host_ip("::"), Ok(None));
    }
}
