//! Embedded adapters: objects in a directory, and queues, jobs, events and WebSocket connections in
//! one SQLite file (WAL, `synchronous=FULL`). Several processes may share one data directory: SQLite
//! serialises their writes, and consumers poll, so `iris run` and one process per service work alike.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection as SqliteConnection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::events::{DetailType, EventEnvelope};
use crate::job::{JobId, JobRecord, Transition};
use crate::keys::{ObjectKey, QueueRole, UserId, queues_for_created_object};
use crate::ports::{
    Connection, ConnectionStore, EventBus, JobStore, ObjectInfo, ObjectMetadata, ObjectStore, PortError, QueueDepth,
    ReceiptHandle, ReceivedMessage, Subscription, TransitionOutcome, WorkQueue,
};
use crate::s3_event::object_created_notification;
use crate::time::Timestamp;

const BACKEND: &str = "sqlite";
const OBJECTS_BACKEND: &str = "object directory";
/// How often a consumer waiting for messages looks for ones sent by other processes.
/// Sends from the same process wake it at once.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(25);

/// The embedded database: one SQLite file shared by every embedded adapter of a process.
pub struct SqliteDatabase {
    connection: Mutex<SqliteConnection>,
    path: PathBuf,
    queue_wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Objects in `<data dir>/objects/<key>`, metadata in SQLite; created objects are announced on the
/// queues named by the notification rules, as S3 bucket notifications would be.
pub struct DirectoryObjectStore {
    database: Arc<SqliteDatabase>,
    root: PathBuf,
    bucket: String,
    queue_names: BTreeMap<QueueRole, String>,
}

/// A queue in the SQLite file, with SQS semantics (visibility timeout, receive count, redrive
/// to `<name>-dlq` after `max_receive_count` receives).
pub struct SqliteWorkQueue {
    database: Arc<SqliteDatabase>,
    name: String,
    dead_letter_name: String,
    max_receive_count: u32,
}

/// The job table, plus an append-only history of applied transitions (for audits and tests).
pub struct SqliteJobStore {
    database: Arc<SqliteDatabase>,
}

/// The event bus: publishing logs the event and routes it, by rule, onto queues.
pub struct SqliteEventBus {
    database: Arc<SqliteDatabase>,
    rules: Vec<EventRule>,
}

/// Routes events of these detail types (all when empty) to a queue, like an EventBridge rule with an SQS target.
#[derive(Debug, Clone)]
pub struct EventRule {
    pub name: String,
    pub detail_types: Vec<DetailType>,
    pub queue_name: String,
}

pub struct SqliteConnectionStore {
    database: Arc<SqliteDatabase>,
}

/// One applied transition, from the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub job_id: String,
    pub status: String,
}

/// One published event, from the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub event_id: String,
    pub detail_type: String,
    pub body: String,
}

static SEQUENCER: AtomicU64 = AtomicU64::new(0);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY, size INTEGER NOT NULL, etag TEXT NOT NULL,
    metadata TEXT NOT NULL, last_modified INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, sent_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, dead_letter_reason TEXT);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages(queue, visible_at, id);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    rank INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs(user_id, created_at);
CREATE TABLE IF NOT EXISTS job_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, status TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS job_history_by_job ON job_history(job_id, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, job_id TEXT NOT NULL,
    detail_type TEXT NOT NULL, body TEXT NOT NULL, published_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS connections (
    connection_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, connected_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    connection_id TEXT NOT NULL, job_id TEXT NOT NULL, delivered_rank INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connection_id, job_id));
CREATE INDEX IF NOT EXISTS subscriptions_by_job ON subscriptions(job_id);
";

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
    async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, PortError>
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

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.queue_wakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(wakers.entry(queue.to_owned()).or_default())
    }

    fn wake(&self, queue: &str) {
        self.waker(queue).notify_waiters();
    }
}

fn sqlite_error(error: rusqlite::Error) -> PortError {
    PortError::unavailable(BACKEND, error)
}

fn json_error(error: serde_json::Error) -> PortError {
    PortError::Invalid { backend: BACKEND, message: format!("stored JSON is unreadable: {error}") }
}

fn insert_message(transaction: &rusqlite::Transaction<'_>, queue: &str, body: &str, now: i64) -> Result<(), PortError> {
    transaction
        .execute(
            "INSERT INTO messages (queue, message_id, body, sent_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![queue, uuid::Uuid::new_v4().to_string(), body, now],
        )
        .map_err(sqlite_error)?;
    Ok(())
}

impl DirectoryObjectStore {
    pub fn new(
        database: Arc<SqliteDatabase>,
        root: PathBuf,
        bucket: &str,
        queue_names: BTreeMap<QueueRole, String>,
    ) -> DirectoryObjectStore {
        DirectoryObjectStore { database, root, bucket: bucket.to_owned(), queue_names }
    }

    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The ETag `put` gives these bytes, so a client can know an upload's job id before it uploads.
    pub fn etag_for(body: &[u8]) -> String {
        etag_of(body)
    }
}

fn etag_of(body: &[u8]) -> String {
    hex::encode(&Sha256::digest(body)[..16])
}

fn row_to_info(key: String, size: i64, etag: String, metadata: String, modified: i64) -> Result<ObjectInfo, PortError> {
    Ok(ObjectInfo {
        key: ObjectKey::parse(&key).map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?,
        size: size as u64,
        etag,
        version_id: None,
        metadata: serde_json::from_str(&metadata).map_err(json_error)?,
        last_modified: Timestamp::from_epoch_millis(modified),
    })
}

#[async_trait]
impl ObjectStore for DirectoryObjectStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, key: &ObjectKey, body: Vec<u8>, metadata: &ObjectMetadata) -> Result<ObjectInfo, PortError> {
        let path = self.path_of(key);
        let size = body.len() as u64;
        let etag = etag_of(&body);
        // 1. The bytes: temporary file in the target directory, fsync, atomic rename.
        tokio::task::spawn_blocking(move || write_atomically(&path, &body))
            .await
            .map_err(|e| PortError::unavailable(OBJECTS_BACKEND, e))??;
        // 2. Metadata and the object-created notifications, in one transaction.
        let now = Timestamp::now();
        let info = ObjectInfo {
            key: key.clone(),
            size,
            etag: etag.clone(),
            version_id: None,
            metadata: metadata.clone(),
            last_modified: now,
        };
        let mut notifications = Vec::new();
        for rule in queues_for_created_object(key) {
            let Some(queue) = self.queue_names.get(&rule.queue) else { continue };
            let sequencer = SEQUENCER.fetch_add(1, Ordering::Relaxed) + now.epoch_millis() as u64 * 1000;
            let body = object_created_notification(&self.bucket, key.as_str(), size, &etag, rule.id, now, sequencer);
            notifications.push((queue.clone(), serde_json::to_string(&body).map_err(json_error)?));
        }
        let metadata_json = serde_json::to_string(metadata).map_err(json_error)?;
        let key_text = key.as_str().to_owned();
        let queues: Vec<String> = notifications.iter().map(|(q, _)| q.clone()).collect();
        self.database
            .run(move |connection| {
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                transaction
                    .execute(
                        "INSERT INTO objects (key, size, etag, metadata, last_modified) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(key) DO UPDATE SET size = ?2, etag = ?3, metadata = ?4, last_modified = ?5",
                        params![key_text, size as i64, etag, metadata_json, now.epoch_millis()],
                    )
                    .map_err(sqlite_error)?;
                for (queue, body) in &notifications {
                    insert_message(&transaction, queue, body, now.epoch_millis())?;
                }
                transaction.commit().map_err(sqlite_error)
            })
            .await?;
        for queue in queues {
            self.database.wake(&queue);
        }
        Ok(info)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, PortError> {
        let path = self.path_of(key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PortError::NotFound(key.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Err(PortError::NotFound(key.to_string())),
            Err(e) => Err(PortError::unavailable(OBJECTS_BACKEND, e)),
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, PortError> {
        let key_text = key.as_str().to_owned();
        let row: Option<(String, i64, String, String, i64)> = self
            .database
            .run(move |connection| {
                connection
                    .query_row(
                        "SELECT key, size, etag, metadata, last_modified FROM objects WHERE key = ?1",
                        params![key_text],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )
                    .optional()
                    .map_err(sqlite_error)
            })
            .await?;
        // The row is written after the bytes; a row without its file (a crash in between) is no object.
        match row {
            Some((key_text, size, etag, metadata, modified)) if self.path_of(key).is_file() => {
                Ok(Some(row_to_info(key_text, size, etag, metadata, modified)?))
            }
            _ => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PortError> {
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let rows: Vec<(String, i64, String, String, i64)> = self
            .database
            .run(move |connection| {
                let mut statement = connection
                    .prepare(
                        "SELECT key, size, etag, metadata, last_modified FROM objects
                         WHERE key LIKE ?1 ESCAPE '\\' ORDER BY key",
                    )
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![pattern], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await?;
        rows.into_iter()
            .filter(|(key, ..)| key.starts_with(prefix))
            .map(|(key, size, etag, metadata, modified)| row_to_info(key, size, etag, metadata, modified))
            .collect()
    }
}

fn write_atomically(path: &Path, body: &[u8]) -> Result<(), PortError> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotADirectory || e.kind() == std::io::ErrorKind::IsADirectory {
            PortError::Invalid {
                backend: OBJECTS_BACKEND,
                message: format!("{} conflicts with an existing object used as a folder: {e}", path.display()),
            }
        } else {
            PortError::unavailable(OBJECTS_BACKEND, e)
        }
    };
    let parent = path.parent().ok_or_else(|| PortError::unavailable(OBJECTS_BACKEND, "object path has no parent"))?;
    std::fs::create_dir_all(parent).map_err(io)?;
    let mut temporary = tempfile::Builder::new().prefix(".incoming-").tempfile_in(parent).map_err(io)?;
    temporary.write_all(body).map_err(io)?;
    temporary.as_file().sync_all().map_err(io)?;
    temporary.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

impl SqliteWorkQueue {
    pub fn new(database: Arc<SqliteDatabase>, name: &str, max_receive_count: u32) -> SqliteWorkQueue {
        SqliteWorkQueue {
            database,
            name: name.to_owned(),
            dead_letter_name: format!("{name}-dlq"),
            max_receive_count: max_receive_count.max(1),
        }
    }

    pub fn dead_letter_queue_name(&self) -> &str {
        &self.dead_letter_name
    }

    /// Messages in the dead-letter queue (body, reason), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<(String, String)>, PortError> {
        let dead_letter_name = self.dead_letter_name.clone();
        self.database
            .run(move |connection| {
                let mut statement = connection
                    .prepare("SELECT body, COALESCE(dead_letter_reason, '') FROM messages WHERE queue = ?1 ORDER BY id")
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![dead_letter_name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await
    }

    async fn try_receive(
        &self,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let name = self.name.clone();
        let dead_letter_name = self.dead_letter_name.clone();
        let max_receive_count = self.max_receive_count;
        let timeout_ms = visibility_timeout.as_millis() as i64;
        self.database
            .run(move |connection| {
                let now = Timestamp::now().epoch_millis();
                // A plain read first: idle polling never takes the write lock.
                let any: Option<i64> = connection
                    .query_row(
                        "SELECT id FROM messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
                        params![name, now],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sqlite_error)?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                let mut received = Vec::new();
                {
                    let mut select = transaction
                        .prepare(
                            "SELECT id, message_id, body, receive_count FROM messages
                             WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3",
                        )
                        .map_err(sqlite_error)?;
                    let candidates: Vec<(i64, String, String, u32)> = select
                        .query_map(params![name, now, (max_messages * 4).max(1) as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .map_err(sqlite_error)?
                        .collect::<Result<_, _>>()
                        .map_err(sqlite_error)?;
                    for (id, message_id, body, receive_count) in candidates {
                        if received.len() == max_messages {
                            break;
                        }
                        if receive_count >= max_receive_count {
                            // Redrive policy: received too often without being deleted.
                            transaction
                                .execute(
                                    "UPDATE messages SET queue = ?2, receipt = NULL, visible_at = ?3,
                                     dead_letter_reason = ?4 WHERE id = ?1",
                                    params![id, dead_letter_name, now, format!("received {receive_count} times (maxReceiveCount {max_receive_count})")],
                                )
                                .map_err(sqlite_error)?;
                            continue;
                        }
                        let receipt = format!("{id}:{}", uuid::Uuid::new_v4());
                        transaction
                            .execute(
                                "UPDATE messages SET visible_at = ?2, receive_count = receive_count + 1, receipt = ?3 WHERE id = ?1",
                                params![id, now + timeout_ms, receipt],
                            )
                            .map_err(sqlite_error)?;
                        received.push(ReceivedMessage {
                            message_id,
                            body,
                            receipt: ReceiptHandle(receipt),
                            receive_count: receive_count + 1,
                        });
                    }
                }
                transaction.commit().map_err(sqlite_error)?;
                Ok(received)
            })
            .await
    }
}

fn message_id_of_receipt(receipt: &ReceiptHandle) -> Result<i64, PortError> {
    receipt.0.split(':').next().and_then(|id| id.parse().ok()).ok_or_else(|| PortError::Invalid {
        backend: BACKEND,
        message: format!("malformed receipt handle {:?}", receipt.0),
    })
}

#[async_trait]
impl WorkQueue for SqliteWorkQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str) -> Result<(), PortError> {
        let name = self.name.clone();
        let body = body.to_owned();
        self.database
            .run(move |connection| {
                let transaction = connection.transaction().map_err(sqlite_error)?;
                insert_message(&transaction, &name, &body, Timestamp::now().epoch_millis())?;
                transaction.commit().map_err(sqlite_error)
            })
            .await?;
        self.database.wake(&self.name);
        Ok(())
    }

    async fn receive(
        &self,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let deadline = tokio::time::Instant::now() + wait;
        let waker = self.database.waker(&self.name);
        loop {
            // Register interest before looking, so a send between the look and the wait is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.try_receive(max_messages.max(1), visibility_timeout).await?;
            let now = tokio::time::Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let poll = CROSS_PROCESS_POLL.min(deadline - now);
            let _ = tokio::time::timeout(poll, notified).await;
        }
    }

    async fn extend_visibility(&self, receipt: &ReceiptHandle, visibility_timeout: Duration) -> Result<(), PortError> {
        let id = message_id_of_receipt(receipt)?;
        let receipt = receipt.0.clone();
        let timeout_ms = visibility_timeout.as_millis() as i64;
        let changed = self
            .database
            .run(move |connection| {
                connection
                    .execute(
                        "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND receipt = ?2",
                        params![id, receipt, Timestamp::now().epoch_millis() + timeout_ms],
                    )
                    .map_err(sqlite_error)
            })
            .await?;
        if changed == 1 { Ok(()) } else { Err(PortError::StaleReceipt) }
    }

    async fn ack(&self, receipt: &ReceiptHandle) -> Result<(), PortError> {
        let id = message_id_of_receipt(receipt)?;
        let receipt = receipt.0.clone();
        let deleted = self
            .database
            .run(move |connection| {
                connection
                    .execute("DELETE FROM messages WHERE id = ?1 AND receipt = ?2", params![id, receipt])
                    .map_err(sqlite_error)
            })
            .await?;
        if deleted == 1 { Ok(()) } else { Err(PortError::StaleReceipt) }
    }

    async fn dead_letter(&self, message: &ReceivedMessage, reason: &str) -> Result<(), PortError> {
        let id = message_id_of_receipt(&message.receipt)?;
        let receipt = message.receipt.0.clone();
        let dead_letter_name = self.dead_letter_name.clone();
        let reason = reason.to_owned();
        let moved = self
            .database
            .run(move |connection| {
                connection
                    .execute(
                        "UPDATE messages SET queue = ?3, receipt = NULL, dead_letter_reason = ?4 WHERE id = ?1 AND receipt = ?2",
                        params![id, receipt, dead_letter_name, reason],
                    )
                    .map_err(sqlite_error)
            })
            .await?;
        if moved == 1 { Ok(()) } else { Err(PortError::StaleReceipt) }
    }

    async fn depth(&self) -> Result<QueueDepth, PortError> {
        let name = self.name.clone();
        let dead_letter_name = self.dead_letter_name.clone();
        self.database
            .run(move |connection| {
                let now = Timestamp::now().epoch_millis();
                let count = |sql: &str, queue: &str| -> Result<u64, PortError> {
                    connection
                        .query_row(sql, params![queue, now], |r| r.get::<_, i64>(0))
                        .map(|n| n as u64)
                        .map_err(sqlite_error)
                };
                Ok(QueueDepth {
                    visible: count("SELECT COUNT(*) FROM messages WHERE queue = ?1 AND visible_at <= ?2", &name)?,
                    in_flight: count("SELECT COUNT(*) FROM messages WHERE queue = ?1 AND visible_at > ?2", &name)?,
                    dead_lettered: count(
                        "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND ?2 = ?2",
                        &dead_letter_name,
                    )?,
                })
            })
            .await
    }
}

impl SqliteJobStore {
    pub fn new(database: Arc<SqliteDatabase>) -> SqliteJobStore {
        SqliteJobStore { database }
    }

    /// Every applied transition of a job, in order (RECEIVED first).
    pub async fn history(&self, job_id: &JobId) -> Result<Vec<HistoryEntry>, PortError> {
        let job_id = job_id.as_str().to_owned();
        self.database
            .run(move |connection| {
                let mut statement = connection
                    .prepare("SELECT job_id, status FROM job_history WHERE job_id = ?1 ORDER BY seq")
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![job_id], |r| Ok(HistoryEntry { job_id: r.get(0)?, status: r.get(1)? }))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await
    }
}

fn read_job(connection: &SqliteConnection, job_id: &str) -> Result<Option<JobRecord>, PortError> {
    let text: Option<String> = connection
        .query_row("SELECT record FROM jobs WHERE job_id = ?1", params![job_id], |r| r.get(0))
        .optional()
        .map_err(sqlite_error)?;
    text.map(|t| serde_json::from_str(&t).map_err(json_error)).transpose()
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn create_if_absent(&self, job: &JobRecord) -> Result<bool, PortError> {
        let record = serde_json::to_string(job).map_err(json_error)?;
        let job = job.clone();
        self.database
            .run(move |connection| {
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                let inserted = transaction
                    .execute(
                        "INSERT INTO jobs (job_id, user_id, created_at, rank, record) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(job_id) DO NOTHING",
                        params![
                            job.job_id.as_str(),
                            job.user_id.as_str(),
                            job.created_at.epoch_millis(),
                            job.status.rank(),
                            record
                        ],
                    )
                    .map_err(sqlite_error)?;
                if inserted == 1 {
                    transaction
                        .execute(
                            "INSERT INTO job_history (job_id, status, at) VALUES (?1, ?2, ?3)",
                            params![job.job_id.as_str(), job.status.as_str(), job.created_at.epoch_millis()],
                        )
                        .map_err(sqlite_error)?;
                }
                transaction.commit().map_err(sqlite_error)?;
                Ok(inserted == 1)
            })
            .await
    }

    async fn transition(&self, job_id: &JobId, transition: &Transition) -> Result<TransitionOutcome, PortError> {
        let job_id = job_id.as_str().to_owned();
        let transition = transition.clone();
        self.database
            .run(move |connection| {
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                let Some(current) = read_job(&transaction, &job_id)? else {
                    return Ok(TransitionOutcome::NotFound);
                };
                let Some(next) = current.advanced(&transition) else {
                    return Ok(TransitionOutcome::Ignored(current));
                };
                // The condition is re-checked in SQL, as DynamoDB's condition expression does.
                let updated = transaction
                    .execute(
                        "UPDATE jobs SET rank = ?2, record = ?3 WHERE job_id = ?1 AND rank < ?2 AND rank < ?4",
                        params![
                            job_id,
                            next.status.rank(),
                            serde_json::to_string(&next).map_err(json_error)?,
                            crate::job::JobStatus::Completed.rank()
                        ],
                    )
                    .map_err(sqlite_error)?;
                if updated == 0 {
                    return Ok(TransitionOutcome::Ignored(current));
                }
                transaction
                    .execute(
                        "INSERT INTO job_history (job_id, status, at) VALUES (?1, ?2, ?3)",
                        params![job_id, next.status.as_str(), transition.at.epoch_millis()],
                    )
                    .map_err(sqlite_error)?;
                transaction.commit().map_err(sqlite_error)?;
                Ok(TransitionOutcome::Applied(next))
            })
            .await
    }

    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, PortError> {
        let job_id = job_id.as_str().to_owned();
        self.database.run(move |connection| read_job(connection, &job_id)).await
    }

    async fn list_by_user(&self, user_id: &UserId, limit: usize) -> Result<Vec<JobRecord>, PortError> {
        let user_id = user_id.as_str().to_owned();
        self.database
            .run(move |connection| {
                let mut statement = connection
                    .prepare("SELECT record FROM jobs WHERE user_id = ?1 ORDER BY created_at DESC, job_id LIMIT ?2")
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![user_id, limit as i64], |r| r.get::<_, String>(0))
                    .map_err(sqlite_error)?;
                let mut jobs = Vec::new();
                for row in rows {
                    jobs.push(serde_json::from_str(&row.map_err(sqlite_error)?).map_err(json_error)?);
                }
                Ok(jobs)
            })
            .await
    }
}

impl SqliteEventBus {
    pub fn new(database: Arc<SqliteDatabase>, rules: Vec<EventRule>) -> SqliteEventBus {
        SqliteEventBus { database, rules }
    }

    /// The event log of one job, in publication order (duplicates included).
    pub async fn published(&self, job_id: &JobId) -> Result<Vec<PublishedEvent>, PortError> {
        let job_id = job_id.as_str().to_owned();
        self.database
            .run(move |connection| {
                let mut statement = connection
                    .prepare("SELECT event_id, detail_type, body FROM events WHERE job_id = ?1 ORDER BY seq")
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![job_id], |r| {
                        Ok(PublishedEvent { event_id: r.get(0)?, detail_type: r.get(1)?, body: r.get(2)? })
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await
    }
}

#[async_trait]
impl EventBus for SqliteEventBus {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PortError> {
        let mut rows = Vec::new();
        let mut woken = Vec::new();
        for event in events {
            let body = serde_json::to_string(event).map_err(json_error)?;
            let targets: Vec<String> = self
                .rules
                .iter()
                .filter(|rule| rule.detail_types.is_empty() || rule.detail_types.contains(&event.detail_type))
                .map(|rule| rule.queue_name.clone())
                .collect();
            woken.extend(targets.iter().cloned());
            rows.push((
                event.detail.event_id.clone(),
                event.detail.job_id.as_str().to_owned(),
                event.detail_type.as_str(),
                body,
                targets,
            ));
        }
        self.database
            .run(move |connection| {
                let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                let now = Timestamp::now().epoch_millis();
                for (event_id, job_id, detail_type, body, targets) in &rows {
                    transaction
                        .execute(
                            "INSERT INTO events (event_id, job_id, detail_type, body, published_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![event_id, job_id, detail_type, body, now],
                        )
                        .map_err(sqlite_error)?;
                    for queue in targets {
                        insert_message(&transaction, queue, body, now)?;
                    }
                }
                transaction.commit().map_err(sqlite_error)
            })
            .await?;
        for queue in woken {
            self.database.wake(&queue);
        }
        Ok(())
    }
}

impl SqliteConnectionStore {
    pub fn new(database: Arc<SqliteDatabase>) -> SqliteConnectionStore {
        SqliteConnectionStore { database }
    }
}

#[async_trait]
impl ConnectionStore for SqliteConnectionStore {
    async fn add_connection(&self, connection: &Connection) -> Result<(), PortError> {
        let c = connection.clone();
        self.database
            .run(move |db| {
                db.execute(
                    "INSERT INTO connections (connection_id, user_id, connected_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(connection_id) DO UPDATE SET user_id = ?2, connected_at = ?3",
                    params![c.connection_id, c.user_id.as_str(), c.connected_at.epoch_millis()],
                )
                .map(|_| ())
                .map_err(sqlite_error)
            })
            .await
    }

    async fn remove_connection(&self, connection_id: &str) -> Result<(), PortError> {
        let id = connection_id.to_owned();
        self.database
            .run(move |db| {
                let transaction = db.transaction().map_err(sqlite_error)?;
                transaction
                    .execute("DELETE FROM subscriptions WHERE connection_id = ?1", params![id])
                    .map_err(sqlite_error)?;
                transaction
                    .execute("DELETE FROM connections WHERE connection_id = ?1", params![id])
                    .map_err(sqlite_error)?;
                transaction.commit().map_err(sqlite_error)
            })
            .await
    }

    async fn get_connection(&self, connection_id: &str) -> Result<Option<Connection>, PortError> {
        let id = connection_id.to_owned();
        let row: Option<(String, String, i64)> = self
            .database
            .run(move |db| {
                db.query_row(
                    "SELECT connection_id, user_id, connected_at FROM connections WHERE connection_id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(sqlite_error)
            })
            .await?;
        row.map(|(connection_id, user, at)| {
            Ok(Connection {
                connection_id,
                user_id: UserId::parse(&user)
                    .map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?,
                connected_at: Timestamp::from_epoch_millis(at),
            })
        })
        .transpose()
    }

    async fn subscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute(
                    "INSERT INTO subscriptions (connection_id, job_id) SELECT ?1, ?2
                     WHERE EXISTS (SELECT 1 FROM connections WHERE connection_id = ?1)
                     ON CONFLICT(connection_id, job_id) DO NOTHING",
                    params![id, job],
                )
                .map(|_| ())
                .map_err(sqlite_error)
            })
            .await
    }

    async fn unsubscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute("DELETE FROM subscriptions WHERE connection_id = ?1 AND job_id = ?2", params![id, job])
                    .map(|_| ())
                    .map_err(sqlite_error)
            })
            .await
    }

    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<Subscription>, PortError> {
        let job = job_id.clone();
        let rows: Vec<(String, String, u8)> = self
            .database
            .run({
                let job = job.as_str().to_owned();
                move |db| {
                    let mut statement = db
                        .prepare(
                            "SELECT s.connection_id, c.user_id, s.delivered_rank FROM subscriptions s
                             JOIN connections c ON c.connection_id = s.connection_id WHERE s.job_id = ?1 ORDER BY s.connection_id",
                        )
                        .map_err(sqlite_error)?;
                    let rows = statement.query_map(params![job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(sqlite_error)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
                }
            })
            .await?;
        rows.into_iter()
            .map(|(connection_id, user, delivered_rank)| {
                Ok(Subscription {
                    connection_id,
                    user_id: UserId::parse(&user)
                        .map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?,
                    job_id: job.clone(),
                    delivered_rank,
                })
            })
            .collect()
    }

    async fn advance_delivery(&self, connection_id: &str, job_id: &JobId, rank: u8) -> Result<bool, PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute(
                    "UPDATE subscriptions SET delivered_rank = ?3 WHERE connection_id = ?1 AND job_id = ?2 AND delivered_rank < ?3",
                    params![id, job, rank],
                )
                .map(|n| n == 1)
                .map_err(sqlite_error)
            })
            .await
    }

    async fn release_delivery(
        &self,
        connection_id: &str,
        job_id: &JobId,
        rank: u8,
        previous_rank: u8,
    ) -> Result<(), PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute(
                    "UPDATE subscriptions SET delivered_rank = ?4 WHERE connection_id = ?1 AND job_id = ?2 AND delivered_rank = ?3",
                    params![id, job, rank, previous_rank],
                )
                .map(|_| ())
                .map_err(sqlite_error)
            })
            .await
    }
}
