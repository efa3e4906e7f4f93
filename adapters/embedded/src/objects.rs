//! [`DirectoryObjectStore`]: objects as files under `<data dir>/objects/`, written atomically,
//! with their metadata in SQLite and their object-created notifications queued in the same
//! transaction, as S3 bucket notifications would be.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use iris_core::keys::{ObjectKey, QueueRole, queues_for_created_object};
use iris_core::ports::{ObjectInfo, ObjectMetadata, ObjectStore, PortError};
use iris_core::s3_event::object_created_notification;
use iris_core::time::Timestamp;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use crate::database::{BACKEND, SqliteDatabase, insert_message, json_error, sqlite_error};

const OBJECTS_BACKEND: &str = "object directory";

/// Objects in `<data dir>/objects/<key>`, metadata in SQLite; created objects are announced on the
/// queues named by the notification rules, as S3 bucket notifications would be.
pub struct DirectoryObjectStore {
    database: Arc<SqliteDatabase>,
    root: PathBuf,
    bucket: String,
    queue_names: BTreeMap<QueueRole, String>,
}

static SEQUENCER: AtomicU64 = AtomicU64::new(0);

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

    async fn get_matching(&self, key: &ObjectKey, etag: &str, max_bytes: u64) -> Result<Vec<u8>, PortError> {
        let path = self.path_of(key);
        let (key_text, expected) = (key.to_string(), etag.to_owned());
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory) => {
                    return Err(PortError::NotFound(key_text));
                }
                Err(e) => return Err(PortError::unavailable(OBJECTS_BACKEND, e)),
            };
            // A put replaces the file atomically (rename), so this open file is one version's
            // bytes; their ETag says which.
            let mut bytes = Vec::new();
            file.take(max_bytes.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| PortError::unavailable(OBJECTS_BACKEND, e))?;
            if bytes.len() as u64 > max_bytes {
                return Err(PortError::TooLarge { limit: max_bytes });
            }
            if etag_of(&bytes) != expected {
                return Err(PortError::PreconditionFailed(key_text));
            }
            Ok(bytes)
        })
        .await
        .map_err(|e| PortError::unavailable(OBJECTS_BACKEND, e))?
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

    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        // The bytes first: a row without its file already reads as no object (see `head`).
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::IsADirectory => {}
            Err(e) => return Err(PortError::unavailable(OBJECTS_BACKEND, e)),
        }
        let key_text = key.as_str().to_owned();
        self.database
            .run(move |connection| {
                connection
                    .execute("DELETE FROM objects WHERE key = ?1", params![key_text])
                    .map(|_| ())
                    .map_err(sqlite_error)
            })
            .await
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
