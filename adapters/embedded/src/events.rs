//! [`SqliteEventBus`]: publishing logs the event and routes it, by rule, onto queues, as an
//! EventBridge rule with an SQS target does.

use std::sync::Arc;

use async_trait::async_trait;
use iris_core::events::{DetailType, EventEnvelope};
use iris_core::ids::JobId;
use iris_core::ports::{EventBus, PortError};
use iris_core::time::Timestamp;
use rusqlite::{TransactionBehavior, params};

use crate::database::{SqliteDatabase, insert_message, json_error, sqlite_error};

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

/// One published event, from the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub event_id: String,
    pub detail_type: String,
    pub body: String,
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
