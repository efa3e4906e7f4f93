//! The set of port implementations a process runs on, as trait objects: what services are given.
//! Which adapters fill it is decided at the edge (`iris-backends`), never here.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::keys::QueueRole;
use crate::ports::{ConnectionStore, EventBus, JobStore, ObjectStore, WorkQueue};
use crate::runtime::JobLedger;

/// The ports of one deployment.
#[derive(Clone)]
pub struct Backends {
    pub objects: Arc<dyn ObjectStore>,
    pub jobs: Arc<dyn JobStore>,
    pub events: Arc<dyn EventBus>,
    pub connections: Arc<dyn ConnectionStore>,
    pub queues: BTreeMap<QueueRole, Arc<dyn WorkQueue>>,
}

impl Backends {
    pub fn ledger(&self) -> JobLedger {
        JobLedger { jobs: Arc::clone(&self.jobs), events: Arc::clone(&self.events) }
    }

    pub fn queue(&self, role: QueueRole) -> Arc<dyn WorkQueue> {
        Arc::clone(&self.queues[&role])
    }
}
