//! The embedded database: one SQLite file (WAL, `synchronous=FULL`) shared by every embedded
//! adapter of a process, its blocking work run off the async threads, and the wakers that let a
//! consumer in this process see a send at once (other processes' sends are polled for).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iris_core::ports::PortError;
use rusqlite::{Connection as SqliteConnection, params};
use tokio::sync::Notify;

use crate::schema::SCHEMA;

pub(crate) const BACKEND: &str = "sqlite";

/// The embedded database: one SQLite file shared by every embedded adapter of a process.
pub struct SqliteDatabase {
    connection: Mutex<SqliteConnection>,
    path: PathBuf,
    queue_wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl SqliteDatabase {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path) -> Result<Arc<SqliteDatabase>, PortError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| PortError::unavailable(BACKEND, e))?;
        }
        let connection = SqliteConnection::open(path).map_err(sqlite_error)?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(sqlite_error)?;
        // Several services may open a new file at the same moment; switching it to WAL can answer
        // SQLITE_BUSY without waiting on the busy handler, so that step is retried for a while.
        let started = std::time::Instant::now();
        loop {
            let setup = connection
                .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
                .and_then(|()| connection.execute_batch(SCHEMA));
            match setup {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(error, _))
                    if error.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(sqlite_error(error)),
            }
        }
        Ok(Arc::new(SqliteDatabase {
            connection: Mutex::new(connection),
            path: path.to_owned(),
            queue_wakers: Mutex::new(HashMap::new()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the connection on a blocking thread.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<T, PortError> + Send + 'static,
    {
        let database = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut connection =
                database.connection.lock().map_err(|_| PortError::unavailable(BACKEND, "poisoned lock"))?;
            work(&mut connection)
        })
        .await
        .map_err(|e| PortError::unavailable(BACKEND, e))?
    }

    pub(crate) fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.queue_wakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(wakers.entry(queue.to_owned()).or_default())
    }

    pub(crate) fn wake(&self, queue: &str) {
        self.waker(queue).notify_waiters();
    }
}

pub(crate) fn sqlite_error(error: rusqlite::Error) -> PortError {
    PortError::unavailable(BACKEND, error)
}

pub(crate) fn json_error(error: serde_json::Error) -> PortError {
    PortError::Invalid { backend: BACKEND, message: format!("stored JSON is unreadable: {error}") }
}

/// Puts a message on `queue` (any queue of the file) inside `transaction`.
pub(crate) fn insert_message(
    transaction: &rusqlite::Transaction<'_>,
    queue: &str,
    body: &str,
    now: i64,
) -> Result<(), PortError> {
    transaction
        .execute(
            "INSERT INTO messages (queue, message_id, body, sent_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![queue, uuid::Uuid::new_v4().to_string(), body, now],
        )
        .map_err(sqlite_error)?;
    Ok(())
}
