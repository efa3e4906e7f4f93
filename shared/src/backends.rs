//! Wiring: the set of port implementations a process runs on.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::IrisConfig;
use crate::embedded::{
    DirectoryObjectStore, EventRule, SqliteConnectionStore, SqliteDatabase, SqliteEventBus, SqliteJobStore,
    SqliteWorkQueue,
};
use crate::keys::QueueRole;
use crate::ports::{ConnectionStore, EventBus, JobStore, ObjectStore, PortError, WorkQueue};
use crate::runtime::JobLedger;

/// The ports, as trait objects: what services are given.
#[derive(Clone)]
pub struct Backends {
    pub objects: Arc<dyn ObjectStore>,
    pub jobs: Arc<dyn JobStore>,
    pub events: Arc<dyn EventBus>,
    pub connections: Arc<dyn ConnectionStore>,
    pub queues: BTreeMap<QueueRole, Arc<dyn WorkQueue>>,
}

/// The embedded adapters with their concrete types (tests and tools read their extras:
/// job history, the event log, dead letters).
#[derive(Clone)]
pub struct EmbeddedBackends {
    pub database: Arc<SqliteDatabase>,
    pub objects: Arc<DirectoryObjectStore>,
    pub jobs: Arc<SqliteJobStore>,
    pub events: Arc<SqliteEventBus>,
    pub connections: Arc<SqliteConnectionStore>,
    pub queues: BTreeMap<QueueRole, Arc<SqliteWorkQueue>>,
}

impl Backends {
    pub fn ledger(&self) -> JobLedger {
        JobLedger { jobs: Arc::clone(&self.jobs), events: Arc::clone(&self.events) }
    }

    pub fn queue(&self, role: QueueRole) -> Arc<dyn WorkQueue> {
        Arc::clone(&self.queues[&role])
    }
}

impl EmbeddedBackends {
    /// Opens (creating if needed) the data directory of `config`.
    pub fn open(config: &IrisConfig) -> Result<EmbeddedBackends, PortError> {
        let database = SqliteDatabase::open(&config.sqlite_path())?;
        let queue_names: BTreeMap<QueueRole, String> =
            QueueRole::ALL.into_iter().map(|role| (role, config.queue_name(role))).collect();
        // The queue's own redrive is one receive beyond the worker's attempts, so the worker sees a
        // message that outlived its attempts (a crash loop) and fails its job before it moves.
        let queues = queue_names
            .iter()
            .map(|(role, name)| {
                (*role, Arc::new(SqliteWorkQueue::new(Arc::clone(&database), name, config.max_attempts + 1)))
            })
            .collect();
        let rules = vec![EventRule {
            name: "pipeline-events-to-notify".into(),
            detail_types: Vec::new(),
            queue_name: queue_names[&QueueRole::Notify].clone(),
        }];
        Ok(EmbeddedBackends {
            objects: Arc::new(DirectoryObjectStore::new(
                Arc::clone(&database),
                config.objects_dir(),
                &config.bucket,
                queue_names.clone(),
            )),
            jobs: Arc::new(SqliteJobStore::new(Arc::clone(&database))),
            events: Arc::new(SqliteEventBus::new(Arc::clone(&database), rules)),
            connections: Arc::new(SqliteConnectionStore::new(Arc::clone(&database))),
            queues,
            database,
        })
    }

    pub fn ports(&self) -> Backends {
        Backends {
            objects: self.objects.clone(),
            jobs: self.jobs.clone(),
            events: self.events.clone(),
            connections: self.connections.clone(),
            queues: self.queues.iter().map(|(role, queue)| (*role, queue.clone() as Arc<dyn WorkQueue>)).collect(),
        }
    }
}
