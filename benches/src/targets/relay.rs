//! `relay`: this harness's own TCP relay (`tern-benches relay`), which parses nothing: the
//! floor under every proxy here (see `crate::relay`).

use std::net::SocketAddr;

use anyhow::{Context, Result};

use super::process::free_addr;
use super::{Running, Setup, Target, TargetName};
use crate::loadgen::Protocol;

pub struct Relay;

/// This program's arguments to relay `listen` to `backend`.
pub fn args(listen: SocketAddr, backend: SocketAddr, workers: usize) -> Vec<String> {
    vec![
        "relay".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
        "--backend".to_owned(),
        backend.to_string(),
        "--workers".to_owned(),
        workers.to_string(),
    ]
}

impl Target for Relay {
    fn name(&self) -> TargetName {
        TargetName::Relay
    }

    fn check_installed(&self) -> Result<()> {
        Ok(())
    }

    fn note(&self, _: Protocol) -> Option<String> {
        Some("TCP relay on tokio, one backend connection per client connection".to_owned())
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let bin = std::env::current_exe().context("finding this program's path")?;
        let listen = free_addr()?;
        let args = args(listen, setup.backend, setup.workers);
        super::start_peer("relay", setup, &bin, &args, listen)
    }
}
