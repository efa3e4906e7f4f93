//! `JobStore` and `ConnectionStore` on Amazon DynamoDB.
//!
//! Job table: partition key `jobId`; attributes `userId`, `createdAt` (epoch ms, the sort key of the
//! `userId-createdAt` index), `rank` and `status` (the forward-only ladder), `record` (the whole
//! job record as JSON), `expiresAt` (epoch seconds, the TTL attribute: 90 days).
//!
//! A transition is one conditional `UpdateItem`: it applies only if the item still has the rank
//! it was computed from and that rank is lower than the new one and not terminal. If another
//! writer got there first, the condition fails, DynamoDB returns the current item
//! (`ReturnValuesOnConditionCheckFailure=ALL_OLD`), and the transition is recomputed from it; if the
//! job has meanwhile reached or passed the new status, the transition is a no-op.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure, Select};
use iris_core::ids::{JobId, UserId};
use iris_core::job::{JobRecord, JobStatus, Transition};
use iris_core::ports::{Connection, ConnectionStore, JobStore, PortError, Subscription, TransitionOutcome};
use iris_core::time::Timestamp;

use crate::error::{error_code, port_error};

const BACKEND: &str = "dynamodb";
pub const USER_INDEX: &str = "userId-createdAt";
pub const JOB_INDEX: &str = "jobId-index";
/// Connection items expire two hours after they are written (API Gateway's connection limit).
pub const CONNECTION_TIME_TO_LIVE_SECONDS: i64 = 2 * 3600;
const CONDITIONAL_FAILED: &str = "ConditionalCheckFailedException";
const CONNECTION_ITEM: &str = "connection";

pub struct DynamoJobStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

pub struct DynamoConnectionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn invalid(message: impl Into<String>) -> PortError {
    PortError::Invalid { backend: BACKEND, message: message.into() }
}

fn record_of(item: &Item) -> Result<JobRecord, PortError> {
    let text = item.get("record").and_then(|v| v.as_s().ok()).ok_or_else(|| invalid("job item has no record"))?;
    serde_json::from_str(text).map_err(|e| invalid(format!("job record is unreadable: {e}")))
}

fn rank_of(item: &Item) -> Option<u8> {
    item.get("rank").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn job_item(job: &JobRecord) -> Result<Item, PortError> {
    Ok(HashMap::from([
        ("jobId".to_owned(), s(job.job_id.as_str())),
        ("userId".to_owned(), s(job.user_id.as_str())),
        ("createdAt".to_owned(), n(job.created_at.epoch_millis())),
        ("updatedAt".to_owned(), n(job.updated_at.epoch_millis())),
        ("rank".to_owned(), n(job.status.rank())),
        ("status".to_owned(), s(job.status.as_str())),
        ("expiresAt".to_owned(), n(job.expires_at)),
        ("run".to_owned(), n(job.run)),
        ("record".to_owned(), s(serde_json::to_string(job).map_err(|e| invalid(e.to_string()))?)),
    ]))
}

impl DynamoJobStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> DynamoJobStore {
        DynamoJobStore { client, table: table.to_owned() }
    }

    async fn read(&self, job_id: &JobId) -> Result<Option<Item>, PortError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("jobId", s(job_id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(found.item().cloned())
    }
}

#[async_trait]
impl JobStore for DynamoJobStore {
    async fn create_if_absent(&self, job: &JobRecord) -> Result<bool, PortError> {
        match self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_item(job)?))
            .condition_expression("attribute_not_exists(jobId)")
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => Ok(false),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    async fn transition(&self, job_id: &JobId, transition: &Transition) -> Result<TransitionOutcome, PortError> {
        let Some(mut item) = self.read(job_id).await? else { return Ok(TransitionOutcome::NotFound) };
        // Each round either applies, finds the job already there, or learns a newer item.
        for _ in 0..16 {
            let current = record_of(&item)?;
            let Some(next) = current.advanced(transition) else { return Ok(TransitionOutcome::Ignored(current)) };
            let expected_rank = rank_of(&item).ok_or_else(|| invalid("job item has no rank"))?;
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("jobId", s(job_id.as_str()))
                .update_expression("SET #record = :record, #rank = :rank, #status = :status, updatedAt = :updated")
                .condition_expression("#rank = :expected AND #rank < :rank AND #rank < :terminal")
                .expression_attribute_names("#record", "record")
                .expression_attribute_names("#rank", "rank")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(
                    ":record",
                    s(serde_json::to_string(&next).map_err(|e| invalid(e.to_string()))?),
                )
                .expression_attribute_values(":rank", n(next.status.rank()))
                .expression_attribute_values(":status", s(next.status.as_str()))
                .expression_attribute_values(":updated", n(next.updated_at.epoch_millis()))
                .expression_attribute_values(":expected", n(expected_rank))
                .expression_attribute_values(":terminal", n(JobStatus::Completed.rank()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match updated {
                Ok(_) => return Ok(TransitionOutcome::Applied(next)),
                Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => {
                    let returned = error.as_service_error().and_then(|e| match e {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                            c,
                        ) => c.item().cloned(),
                        _ => None,
                    });
                    item = match returned {
                        Some(old) => old,
                        None => match self.read(job_id).await? {
                            Some(fresh) => fresh,
                            None => return Ok(TransitionOutcome::NotFound),
                        },
                    };
                }
                Err(error) => return Err(port_error(BACKEND, error)),
            }
        }
        Err(PortError::unavailable(BACKEND, "job item kept changing under a transition"))
    }

    async fn reopen(&self, next: &JobRecord) -> Result<TransitionOutcome, PortError> {
        // Still FAILED and still in the run before `next` (items written before runs existed
        // have no `run` attribute: they are run 1).
        let condition = if next.run == 2 {
            "#rank = :failed AND (attribute_not_exists(#run) OR #run = :previous)"
        } else {
            "#rank = :failed AND #run = :previous"
        };
        let updated = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_item(next)?))
            .condition_expression(condition)
            .expression_attribute_names("#rank", "rank")
            .expression_attribute_names("#run", "run")
            .expression_attribute_values(":failed", n(JobStatus::Failed.rank()))
            .expression_attribute_values(":previous", n(next.run.saturating_sub(1)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match updated {
            Ok(_) => Ok(TransitionOutcome::Applied(next.clone())),
            Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => {
                let returned = error.as_service_error().and_then(|e| match e {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        c.item().cloned()
                    }
                    _ => None,
                });
                match returned {
                    Some(current) => Ok(TransitionOutcome::Ignored(record_of(&current)?)),
                    // No item came back: the put's condition failed on a missing item.
                    None => match self.read(&next.job_id).await? {
                        Some(current) => Ok(TransitionOutcome::Ignored(record_of(&current)?)),
                        None => Ok(TransitionOutcome::NotFound),
                    },
                }
            }
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, PortError> {
        self.read(job_id).await?.as_ref().map(record_of).transpose()
    }

    async fn list_by_user(&self, user_id: &UserId, limit: usize) -> Result<Vec<JobRecord>, PortError> {
        let mut jobs = Vec::new();
        let mut start: Option<Item> = None;
        while jobs.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(USER_INDEX)
                .key_condition_expression("userId = :user")
                .expression_attribute_values(":user", s(user_id.as_str()))
                .scan_index_forward(false)
                .limit((limit - jobs.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| port_error(BACKEND, e))?;
            // The index projects keys only where needed; the record is read from the item itself.
            for item in page.items() {
                if let Some(job) = match item.get("record") {
                    Some(_) => Some(record_of(item)?),
                    None => match item.get("jobId").and_then(|v| v.as_s().ok()).and_then(|id| JobId::parse(id).ok()) {
                        Some(job_id) => self.get(&job_id).await?,
                        None => None,
                    },
                } {
                    jobs.push(job);
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        jobs.truncate(limit);
        Ok(jobs)
    }
}

impl DynamoConnectionStore {
    /// Table: partition key `connectionId`, sort key `item` (`connection`, or `job#<jobId>` for a
    /// subscription), index `jobId-index` on `jobId`, TTL attribute `expiresAt`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> DynamoConnectionStore {
        DynamoConnectionStore { client, table: table.to_owned() }
    }
}

/// Sort keys of subscriptions start with this (the connection's own item does not).
const SUBSCRIPTION_PREFIX: &str = "job#";

fn subscription_key(job_id: &JobId) -> String {
    format!("{SUBSCRIPTION_PREFIX}{job_id}")
}

#[async_trait]
impl ConnectionStore for DynamoConnectionStore {
    async fn add_connection(&self, connection: &Connection) -> Result<(), PortError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("connectionId", s(&connection.connection_id))
            .item("item", s(CONNECTION_ITEM))
            .item("userId", s(connection.user_id.as_str()))
            .item("connectedAt", n(connection.connected_at.epoch_millis()))
            .item("expiresAt", n(connection.connected_at.epoch_seconds() + CONNECTION_TIME_TO_LIVE_SECONDS))
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &str) -> Result<(), PortError> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("connectionId = :c")
            .expression_attribute_values(":c", s(connection_id))
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        for item in items.items() {
            let Some(sort_key) = item.get("item").cloned() else { continue };
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("connectionId", s(connection_id))
                .key("item", sort_key)
                .send()
                .await
                .map_err(|e| port_error(BACKEND, e))?;
        }
        Ok(())
    }

    async fn get_connection(&self, connection_id: &str) -> Result<Option<Connection>, PortError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("item", s(CONNECTION_ITEM))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        let Some(item) = found.item() else { return Ok(None) };
        let user = item.get("userId").and_then(|v| v.as_s().ok()).ok_or_else(|| invalid("connection has no userId"))?;
        let at = item.get("connectedAt").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Connection {
            connection_id: connection_id.to_owned(),
            user_id: UserId::parse(user).map_err(|e| invalid(e.to_string()))?,
            connected_at: Timestamp::from_epoch_millis(at),
        }))
    }

    async fn subscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError> {
        let Some(connection) = self.get_connection(connection_id).await? else { return Ok(()) };
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("connectionId", s(connection_id))
            .item("item", s(subscription_key(job_id)))
            .item("jobId", s(job_id.as_str()))
            .item("userId", s(connection.user_id.as_str()))
            .item("deliveredRank", n(0))
            .item("expiresAt", n(Timestamp::now().epoch_seconds() + CONNECTION_TIME_TO_LIVE_SECONDS))
            .condition_expression("attribute_not_exists(connectionId)")
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => Ok(()),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    async fn unsubscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("item", s(subscription_key(job_id)))
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(())
    }

    async fn subscription_count(&self, connection_id: &str) -> Result<usize, PortError> {
        let mut count = 0usize;
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("connectionId = :c AND begins_with(#item, :p)")
                .expression_attribute_names("#item", "item")
                .expression_attribute_values(":c", s(connection_id))
                .expression_attribute_values(":p", s(SUBSCRIPTION_PREFIX))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| port_error(BACKEND, e))?;
            count += page.count() as usize;
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(count),
            }
        }
    }

    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<Subscription>, PortError> {
        let found = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(JOB_INDEX)
            .key_condition_expression("jobId = :j")
            .expression_attribute_values(":j", s(job_id.as_str()))
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        let mut subscriptions = Vec::new();
        for item in found.items() {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let (Some(connection_id), Some(user)) = (text("connectionId"), text("userId")) else { continue };
            subscriptions.push(Subscription {
                connection_id,
                user_id: UserId::parse(&user).map_err(|e| invalid(e.to_string()))?,
                job_id: job_id.clone(),
                delivered_position: item
                    .get("deliveredRank")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            });
        }
        subscriptions.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        Ok(subscriptions)
    }

    // The attribute keeps its first name, `deliveredRank`: it holds the delivery position.
    async fn advance_delivery(&self, connection_id: &str, job_id: &JobId, position: u32) -> Result<bool, PortError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("item", s(subscription_key(job_id)))
            .update_expression("SET deliveredRank = :rank")
            .condition_expression("attribute_exists(connectionId) AND deliveredRank < :rank")
            .expression_attribute_values(":rank", n(position))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => Ok(false),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    async fn release_delivery(
        &self,
        connection_id: &str,
        job_id: &JobId,
        position: u32,
        previous_position: u32,
    ) -> Result<(), PortError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("item", s(subscription_key(job_id)))
            .update_expression("SET deliveredRank = :previous")
            .condition_expression("attribute_exists(connectionId) AND deliveredRank = :rank")
            .expression_attribute_values(":rank", n(position))
            .expression_attribute_values(":previous", n(previous_position))
            .send()
            .await;
        match updated {
            // Already moved on (a later state was sent) or gone: nothing to undo.
            Ok(_) => Ok(()),
            Err(error) if error_code(&error) == Some(CONDITIONAL_FAILED) => Ok(()),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }
}
