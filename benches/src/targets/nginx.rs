//! `nginx`: nginx as a plain reverse proxy with an upstream keep-alive pool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::process::free_addr;
use super::{Running, Setup, Target, TargetName, installed};
use crate::loadgen::Protocol;

pub struct Nginx {
    pub bin: Option<PathBuf>,
}

const INSTALL: &str = "apt-get install -y nginx-light";

/// The config: `worker_processes` workers (one process each, as Tern's workers are
/// threads), no access log, keep-alive both sides without the default 1,000-request limit
/// per connection. `master` false runs one process (for callgrind).
pub fn config(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    protocol: Protocol,
    workers: usize,
    master: bool,
) -> String {
    let d = dir.display();
    let http2 = match protocol {
        Protocol::Http1 => "",
        Protocol::Http2 => " http2",
    };
    let master = if master { "on" } else { "off" };
    format!(
        "# Written by tern-benches: a plain reverse proxy to one backend.
daemon off;
master_process {master};
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream backend {{
        server {backend};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen}{http2};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

/// Arguments that make nginx use only `dir` (prefix, config, early error log).
pub fn args(dir: &Path, config: &Path) -> Vec<String> {
    vec![
        "-p".to_owned(),
        dir.display().to_string(),
        "-e".to_owned(),
        dir.join("nginx-error.log").display().to_string(),
        "-c".to_owned(),
        config.display().to_string(),
    ]
}

impl Target for Nginx {
    fn name(&self) -> TargetName {
        TargetName::Nginx
    }

    fn check_installed(&self) -> Result<()> {
        installed(&self.bin, "nginx", INSTALL).map(drop)
    }

    fn note(&self, protocol: Protocol) -> Option<String> {
        Some(match protocol {
            Protocol::Http1 => "`worker_processes N`; CPU and RSS: master + workers".to_owned(),
            Protocol::Http2 => {
                "h2c listener, HTTP/1.1 upstream (nginx cannot proxy to an HTTP/2 upstream)"
                    .to_owned()
            }
        })
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let bin = installed(&self.bin, "nginx", INSTALL)?;
        let listen = free_addr()?;
        let path = setup.dir.join("nginx.conf");
        let text = config(
            setup.dir,
            listen,
            setup.backend,
            setup.protocol,
            setup.workers,
            true,
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        super::start_peer("nginx", setup, &bin, &args(setup.dir, &path), listen)
    }
}
