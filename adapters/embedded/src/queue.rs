//! [`SqliteWorkQueue`]: a queue in the SQLite file with SQS's semantics (visibility timeout,
//! receive count, redrive to `<name>-dlq` after `max_receive_count` receives).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iris_core::ports::{PortError, QueueDepth, ReceiptHandle, ReceivedMessage, WorkQueue};
use iris_core::time::Timestamp;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::database::{BACKEND, SqliteDatabase, insert_message, sqlite_error};

/// How often a consumer waiting for messages looks for ones sent by other processes.
/// Sends from the same process wake it at once.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(25);

/// A queue in the SQLite file, with SQS semantics (visibility timeout, receive count, redrive
/// to `<name>-dlq` after `max_receive_count` receives).
pub struct SqliteWorkQueue {
    database: Arc<SqliteDatabase>,
    name: String,
    dead_letter_name: String,
    max_receive_count: u32,
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
