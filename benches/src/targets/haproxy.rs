//! `haproxy`: HAProxy in HTTP mode with connection reuse towards the backend.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::process::free_addr;
use super::{Running, Setup, Target, TargetName, installed};
use crate::loadgen::Protocol;

pub struct Haproxy {
    pub bin: Option<PathBuf>,
}

const INSTALL: &str = "apt-get install -y haproxy";

/// `nbthread` threads, no `log` lines (so no access log), idle server connections shared by
/// all clients (`http-reuse always`, as nginx's and Tern's pools are).
pub fn config(
    listen: SocketAddr,
    backend: SocketAddr,
    protocol: Protocol,
    workers: usize,
) -> String {
    let h2 = match protocol {
        Protocol::Http1 => "",
        Protocol::Http2 => " proto h2",
    };
    format!(
        "# Written by tern-benches: a plain reverse proxy to one backend.
global
    nbthread {workers}
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive

frontend bench
    bind {listen}{h2}
    default_backend backend

backend backend
    http-reuse always
    server b1 {backend}{h2}
"
    )
}

impl Target for Haproxy {
    fn name(&self) -> TargetName {
        TargetName::Haproxy
    }

    fn check_installed(&self) -> Result<()> {
        installed(&self.bin, "HAProxy", INSTALL).map(drop)
    }

    fn note(&self, protocol: Protocol) -> Option<String> {
        Some(match protocol {
            Protocol::Http1 => "`nbthread N`, `http-reuse always`".to_owned(),
            Protocol::Http2 => "`nbthread N`, `proto h2` both sides".to_owned(),
        })
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let bin = installed(&self.bin, "HAProxy", INSTALL)?;
        let listen = free_addr()?;
        let path = setup.dir.join("haproxy.cfg");
        std::fs::write(
            &path,
            config(listen, setup.backend, setup.protocol, setup.workers),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        // -db: foreground, one process (no master-worker), so the PID is the proxy's.
        let args = vec![
            "-db".to_owned(),
            "-f".to_owned(),
            path.display().to_string(),
        ];
        super::start_peer("haproxy", setup, &bin, &args, listen)
    }
}
