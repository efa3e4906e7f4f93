//! Embedded adapters: objects in a directory, and queues, jobs, events and WebSocket connections in
//! one SQLite file (WAL, `synchronous=FULL`). Several processes may share one data directory: SQLite
//! serialises their writes, and consumers poll, so `iris run` and one process per service work alike.
//!
//! One file per port: [`objects`], [`queue`], [`jobs`], [`events`], [`connections`], over the
//! shared [`database`] and its [`schema`]. Each keeps the contract suite of its port
//! (`iris_core::contract`, run in `tests/embedded.rs`).

mod connections;
mod database;
mod events;
mod jobs;
mod objects;
mod queue;
mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;

use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::keys::QueueRole;
use iris_core::ports::{PortError, WorkQueue};

pub use connections::SqliteConnectionStore;
pub use database::SqliteDatabase;
pub use events::{EventRule, PublishedEvent, SqliteEventBus};
pub use jobs::{HistoryEntry, SqliteJobStore};
pub use objects::DirectoryObjectStore;
pub use queue::SqliteWorkQueue;

/// The embedded adapters of one data directory, with their concrete types (tests and tools read
/// their extras: job history, the event log, dead letters).
#[derive(Clone)]
pub struct EmbeddedBackends {
    pub database: Arc<SqliteDatabase>,
    pub objects: Arc<DirectoryObjectStore>,
    pub jobs: Arc<SqliteJobStore>,
    pub events: Arc<SqliteEventBus>,
    pub connections: Arc<SqliteConnectionStore>,
    pub queues: BTreeMap<QueueRole, Arc<SqliteWorkQueue>>,
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

    /// The same adapters as ports.
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
