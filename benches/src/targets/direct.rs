//! `direct`: the load generator talks to the backend itself.

use anyhow::Result;

use super::{Running, Setup, Target, TargetName};
use crate::loadgen::{Endpoint, Protocol};

pub struct Direct;

impl Target for Direct {
    fn name(&self) -> TargetName {
        TargetName::Direct
    }

    fn check_installed(&self) -> Result<()> {
        Ok(())
    }

    fn note(&self, _: Protocol) -> Option<String> {
        None
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        Ok(Running {
            endpoint: Endpoint::for_addr(setup.backend, "/")?,
            procs: Vec::new(),
        })
    }
}
