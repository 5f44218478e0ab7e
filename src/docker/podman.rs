//! Podman behind its Docker-compatible API.
//!
//! Podman's compat answers differ from Docker's in ways the mapping cannot see past:
//! the network list (`GET /networks`) never carries the bridge name (Podman keeps
//! `com.docker.network.bridge.name` in its own `network_interface` field and does not return
//! it), and it lists the default network `podman` as `bridge` while container endpoints
//! still name it `podman`. Podman's own network list (`GET /libpod/networks/json`) has both
//! right, so one extra call fixes the compat list up before the mapping sees it; the mapping
//! itself, and its check that each resolved veth hangs on the bridge its network claims,
//! stay as they are for Docker.

use super::Endpoint;
use super::map::BRIDGE_NAME_OPTION;
use bollard::models::{Network as DockerNetwork, SystemVersion};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Deserialize;

/// The component Podman's `GET /version` lists for itself (Docker lists `Engine`).
const PODMAN_COMPONENT: &str = "Podman Engine";

/// Oldest libpod API whose network list has `network_interface` (Podman 4.0 replaced the
/// CNI-shaped answer of 3.x).
pub const FALLBACK_LIBPOD_API: &str = "4.0.0";

/// The libpod API version to address Podman with, if `GET /version` came from Podman.
///
/// Podman's own version is the safe prefix for its libpod endpoints: it refuses versions newer
/// than itself.
pub fn libpod_api(v: &SystemVersion) -> Option<String> {
    let podman = v
        .components
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|c| c.name.starts_with(PODMAN_COMPONENT))?;
    let api = podman
        .details
        .as_ref()
        .and_then(|d| d.get("APIVersion"))
        .filter(|a| valid_api(a))
        .cloned()
        .unwrap_or_else(|| FALLBACK_LIBPOD_API.to_string());
    Some(api)
}

/// It goes into a URL path: digits and dots only.
fn valid_api(a: &str) -> bool {
    !a.is_empty() && a.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// One entry of `GET /libpod/networks/json`, only what netguard reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LibpodNetwork {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    /// The host bridge of a bridge network (`podman0`, `podman1`, or the name asked for).
    #[serde(default)]
    pub network_interface: Option<String>,
}

/// Gives the compat networks what Docker would have said: Podman's name for each network and
/// its bridge as the bridge-name option. Networks are matched by id (the compat list uses the
/// same ids); a compat network Podman's list lacks (created in between) is left alone, and
/// its endpoints then fail the bridge check rather than being guessed at.
pub fn adopt(networks: &mut [DockerNetwork], libpod: &[LibpodNetwork]) {
    for net in networks.iter_mut() {
        let Some(lp) = net
            .id
            .as_deref()
            .and_then(|id| libpod.iter().find(|l| l.id.as_deref() == Some(id)))
        else {
            tracing::debug!(network = ?net.name, "not in Podman's network list; left as the compat API has it");
            continue;
        };
        if let Some(name) = lp.name.as_ref().filter(|n| !n.is_empty()) {
            net.name = Some(name.clone());
        }
        if let Some(bridge) = lp.network_interface.as_ref().filter(|b| !b.is_empty())
            && net.driver.as_deref() == Some("bridge")
        {
            net.options
                .get_or_insert_with(Default::default)
                .insert(BRIDGE_NAME_OPTION.to_string(), bridge.clone());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("{0}")]
    Transport(String),
    #[error("status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("invalid answer: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no answer within {0} s")]
    Timeout(u64),
}

/// Podman's network list: `GET /v{api}/libpod/networks/json`.
///
/// bollard has no libpod endpoints and no way to send an arbitrary request, so this one GET
/// goes over its own connection to the same socket.
pub async fn libpod_networks(
    endpoint: &Endpoint,
    api: &str,
    timeout_secs: u64,
) -> Result<Vec<LibpodNetwork>, RawError> {
    let path = format!("/v{api}/libpod/networks/json");
    let get = raw_get(endpoint, &path);
    let body = tokio::time::timeout(std::time::Duration::from_secs(timeout_secs), get)
        .await
        .map_err(|_| RawError::Timeout(timeout_secs))??;
    Ok(serde_json::from_slice(&body)?)
}

async fn raw_get(endpoint: &Endpoint, path: &str) -> Result<Bytes, RawError> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let transport = |e: hyper_util::client::legacy::Error| {
        // A socket that refuses or vanished shows as an io::Error down the chain.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return RawError::Io(std::io::Error::new(io.kind(), io.to_string()));
            }
            src = s.source();
        }
        RawError::Transport(e.to_string())
    };
    let resp = match endpoint {
        Endpoint::Unix(socket) => {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
            let uri: hyper::Uri = hyperlocal::Uri::new(socket, path).into();
            client.get(uri).await.map_err(transport)?
        }
        Endpoint::Http(base) => {
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                .build(hyper_util::client::legacy::connect::HttpConnector::new());
            let uri = format!("{}{path}", base.trim_end_matches('/'))
                .parse::<hyper::Uri>()
                .map_err(|e| RawError::Transport(e.to_string()))?;
            client.get(uri).await.map_err(transport)?
        }
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| RawError::Transport(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(RawError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-request HTTP server on a unix socket: answers `status` and `body`, and hands back
    /// the request line it got.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (tempfile::TempDir, String, tokio::task::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podman.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            req.lines().next().unwrap_or("").to_string()
        });
        (dir, path.to_string_lossy().to_string(), task)
    }

    #[tokio::test]
    async fn libpod_network_list_is_read_over_the_unix_socket() {
        let (_dir, path, task) = serve_once(
            "200 OK",
            r#"[{"name":"podman","id":"2f25","driver":"bridge","network_interface":"podman0",
                 "subnets":[{"subnet":"10.88.0.0/16"}]}]"#,
        )
        .await;
        let nets = libpod_networks(&Endpoint::Unix(path), "4.3.1", 5)
            .await
            .unwrap();
        assert_eq!(
            nets,
            [LibpodNetwork {
                name: Some("podman".into()),
                id: Some("2f25".into()),
                driver: Some("bridge".into()),
                network_interface: Some("podman0".into()),
            }]
        );
        assert_eq!(
            task.await.unwrap(),
            "GET /v4.3.1/libpod/networks/json HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn libpod_error_status_is_an_error_with_its_message() {
        let (_dir, path, _task) =
            serve_once("404 Not Found", r#"{"message":"no such route"}"#).await;
        let err = libpod_networks(&Endpoint::Unix(path), "4.0.0", 5)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RawError::Status { status: 404, ref body } if body.contains("no such route")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_an_io_error() {
        let err = libpod_networks(
            &Endpoint::Unix("/nonexistent/podman.sock".into()),
            "4.0.0",
            5,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RawError::Io(io) if io.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
    }
}
