//! [`SqliteConnectionStore`]: WebSocket connections and their job subscriptions, with the
//! per-subscription delivered rank that keeps every subscriber's states in order, each once.

use std::sync::Arc;

use async_trait::async_trait;
use iris_core::ids::{JobId, UserId};
use iris_core::ports::{Connection, ConnectionStore, PortError, Subscription};
use iris_core::time::Timestamp;
use rusqlite::{OptionalExtension, params};

use crate::database::{BACKEND, SqliteDatabase, sqlite_error};

pub struct SqliteConnectionStore {
    database: Arc<SqliteDatabase>,
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

    async fn subscription_count(&self, connection_id: &str) -> Result<usize, PortError> {
        let id = connection_id.to_owned();
        self.database
            .run(move |db| {
                db.query_row("SELECT COUNT(*) FROM subscriptions WHERE connection_id = ?1", params![id], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|count| count as usize)
                .map_err(sqlite_error)
            })
            .await
    }

    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<Subscription>, PortError> {
        let job = job_id.clone();
        let rows: Vec<(String, String, u32)> = self
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
            .map(|(connection_id, user, delivered_position)| {
                Ok(Subscription {
                    connection_id,
                    user_id: UserId::parse(&user)
                        .map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?,
                    job_id: job.clone(),
                    delivered_position,
                })
            })
            .collect()
    }

    // The column keeps its first name: it now holds the delivery position (run, then rank).
    async fn advance_delivery(&self, connection_id: &str, job_id: &JobId, position: u32) -> Result<bool, PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute(
                    "UPDATE subscriptions SET delivered_rank = ?3 WHERE connection_id = ?1 AND job_id = ?2 AND delivered_rank < ?3",
                    params![id, job, position],
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
        position: u32,
        previous_position: u32,
    ) -> Result<(), PortError> {
        let (id, job) = (connection_id.to_owned(), job_id.as_str().to_owned());
        self.database
            .run(move |db| {
                db.execute(
                    "UPDATE subscriptions SET delivered_rank = ?4 WHERE connection_id = ?1 AND job_id = ?2 AND delivered_rank = ?3",
                    params![id, job, position, previous_position],
                )
                .map(|_| ())
                .map_err(sqlite_error)
            })
            .await
    }
}
