//! [`SqliteJobStore`]: the job table, each transition re-checked in SQL as DynamoDB's condition
//! expression does, plus an append-only history of applied transitions (for audits and tests).

use std::sync::Arc;

use async_trait::async_trait;
use iris_core::ids::{JobId, UserId};
use iris_core::job::{JobRecord, JobStatus, Transition};
use iris_core::ports::{JobStore, PortError, TransitionOutcome};
use rusqlite::{Connection as SqliteConnection, OptionalExtension, TransactionBehavior, params};

use crate::database::{SqliteDatabase, json_error, sqlite_error};

/// The job table, plus an append-only history of applied transitions (for audits and tests).
pub struct SqliteJobStore {
    database: Arc<SqliteDatabase>,
}

/// One applied transition, from the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub job_id: String,
    pub status: String,
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
                            JobStatus::Completed.rank()
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

    async fn reopen(&self, next: &JobRecord) -> Result<TransitionOutcome, PortError> {
        let next = next.clone();
        self.database
            .run(move |connection| {
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_error)?;
                let Some(current) = read_job(&transaction, next.job_id.as_str())? else {
                    return Ok(TransitionOutcome::NotFound);
                };
                // The same condition as DynamoDB's: still FAILED, still in the run before `next`.
                if current.status != JobStatus::Failed || current.run + 1 != next.run {
                    return Ok(TransitionOutcome::Ignored(current));
                }
                transaction
                    .execute(
                        "UPDATE jobs SET rank = ?2, record = ?3 WHERE job_id = ?1 AND rank = ?4",
                        params![
                            next.job_id.as_str(),
                            next.status.rank(),
                            serde_json::to_string(&next).map_err(json_error)?,
                            JobStatus::Failed.rank()
                        ],
                    )
                    .map_err(sqlite_error)?;
                transaction
                    .execute(
                        "INSERT INTO job_history (job_id, status, at) VALUES (?1, ?2, ?3)",
                        params![next.job_id.as_str(), next.status.as_str(), next.updated_at.epoch_millis()],
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
