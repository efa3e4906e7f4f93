//! Ports: the only way stage logic touches the outside world. Each has an embedded adapter
//! (directory + SQLite) and an AWS adapter, and one contract suite ([`crate::contract`]) that
//! every adapter must pass.
//!
//! Every error says whether it is worth retrying ([`PortError::is_retryable`]): a retryable error
//! redelivers the message; a permanent one fails the job with a code.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::events::EventEnvelope;
use crate::ids::{JobId, UserId};
use crate::job::{JobRecord, Transition};
use crate::keys::ObjectKey;
use crate::time::Timestamp;

/// User metadata of an object (S3 `x-amz-meta-*`): lowercase names.
pub type ObjectMetadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
    pub etag: String,
    pub version_id: Option<String>,
    pub metadata: ObjectMetadata,
    pub last_modified: Timestamp,
}

/// An S3-like object store. A `put` makes the object visible atomically (readers see the old
/// bytes or the new, never a mix) and, once it returns, the object-created notification is queued.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    fn bucket(&self) -> &str;
    async fn put(&self, key: &ObjectKey, body: Vec<u8>, metadata: &ObjectMetadata) -> Result<ObjectInfo, PortError>;
    /// `PortError::NotFound` when absent.
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, PortError>;
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, PortError>;
    /// The object's bytes, read only if it still has `etag` (S3's `If-Match`), so a reader that
    /// checked an object with `head` gets those bytes or an error, never a replacement's:
    /// `PortError::PreconditionFailed` when the object was replaced, `PortError::NotFound` when it
    /// is gone, and `PortError::TooLarge` as soon as more than `max_bytes` have come (the rest is
    /// not read).
    async fn get_matching(&self, key: &ObjectKey, etag: &str, max_bytes: u64) -> Result<Vec<u8>, PortError>;
    /// Objects whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PortError>;
    /// Removes the object; removing one that does not exist is not an error (as S3's DeleteObject).
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError>;
}

/// Opaque handle of one delivery of a message; only the latest delivery's handle acks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptHandle(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub body: String,
    pub receipt: ReceiptHandle,
    /// 1 on first delivery; grows with every redelivery.
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub dead_lettered: u64,
}

/// An SQS-like queue with at-least-once delivery. A received message is invisible for the
/// visibility timeout; unless acked, it is delivered again after it. A message received more than
/// the queue's `max_receive_count` times moves to its dead-letter queue (the redrive policy).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    fn name(&self) -> &str;
    async fn send(&self, body: &str) -> Result<(), PortError>;
    /// Up to `max_messages`, waiting up to `wait` for the first (long polling).
    async fn receive(
        &self,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, PortError>;
    /// Makes the message invisible for `visibility_timeout` from now (heartbeat, or retry backoff).
    async fn extend_visibility(&self, receipt: &ReceiptHandle, visibility_timeout: Duration) -> Result<(), PortError>;
    /// Deletes the message. `PortError::StaleReceipt` if it was redelivered since.
    async fn ack(&self, receipt: &ReceiptHandle) -> Result<(), PortError>;
    /// Moves the message to the dead-letter queue with a reason.
    async fn dead_letter(&self, message: &ReceivedMessage, reason: &str) -> Result<(), PortError>;
    async fn depth(&self) -> Result<QueueDepth, PortError>;
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// The job moved; the new record.
    Applied(JobRecord),
    /// The job was already at or past that status (a lost race or a repeat): a no-op.
    Ignored(JobRecord),
    NotFound,
}

/// The job table. Transitions are conditional: they apply only if they move the job forward.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates the job unless one with its id exists. True if this call created it.
    async fn create_if_absent(&self, job: &JobRecord) -> Result<bool, PortError>;
    async fn transition(&self, job_id: &JobId, transition: &Transition) -> Result<TransitionOutcome, PortError>;
    /// Starts the next run of a FAILED job: replaces the record with `next` (from
    /// [`JobRecord::reopened`]) only if the job is still FAILED in run `next.run - 1`, so of two
    /// re-uploads racing one wins and the other finds the job already re-opened (`Ignored`).
    async fn reopen(&self, next: &JobRecord) -> Result<TransitionOutcome, PortError>;
    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, PortError>;
    /// The user's jobs, newest first.
    async fn list_by_user(&self, user_id: &UserId, limit: usize) -> Result<Vec<JobRecord>, PortError>;
}

/// The event bus. Rules route published events to queues (the notify queue, integrations).
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PortError>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: String,
    pub user_id: UserId,
    pub connected_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub connection_id: String,
    pub user_id: UserId,
    pub job_id: JobId,
    /// Delivery position (`JobEventDetail::delivery_position`: run, then status rank) of the last
    /// state sent on this subscription (0 if none yet).
    pub delivered_position: u32,
}

/// WebSocket connections and their job subscriptions.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn add_connection(&self, connection: &Connection) -> Result<(), PortError>;
    /// Removes the connection and all its subscriptions.
    async fn remove_connection(&self, connection_id: &str) -> Result<(), PortError>;
    async fn get_connection(&self, connection_id: &str) -> Result<Option<Connection>, PortError>;
    async fn subscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError>;
    async fn unsubscribe(&self, connection_id: &str, job_id: &JobId) -> Result<(), PortError>;
    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<Subscription>, PortError>;
    /// How many jobs the connection is subscribed to (0 for an unknown connection).
    async fn subscription_count(&self, connection_id: &str) -> Result<usize, PortError>;
    /// Records that the state at delivery `position` is being sent on this subscription. True only
    /// if it is newer than anything sent before, so each subscriber sees states in order, each once.
    async fn advance_delivery(&self, connection_id: &str, job_id: &JobId, position: u32) -> Result<bool, PortError>;
    /// Undoes an `advance_delivery` to `position` whose post failed and will be retried: sets the
    /// subscription back to `previous_position` if it is still at `position`.
    async fn release_delivery(
        &self,
        connection_id: &str,
        job_id: &JobId,
        position: u32,
        previous_position: u32,
    ) -> Result<(), PortError>;
}

/// Pushes a message to one WebSocket connection: API Gateway's Management API
/// (`PostToConnection`) in AWS, the local gateway in embedded mode.
#[async_trait]
pub trait ConnectionGateway: Send + Sync {
    /// `PortError::Gone` when the connection no longer exists (HTTP 410): the caller removes it.
    async fn post_to_connection(&self, connection_id: &str, payload: &str) -> Result<(), PortError>;
}

/// Errors of every port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no object at {0}")]
    NotFound(String),
    #[error("connection {0} is gone")]
    Gone(String),
    #[error("receipt handle is stale: the message was redelivered or deleted")]
    StaleReceipt,
    #[error("invalid request to {backend}: {message}")]
    Invalid { backend: &'static str, message: String },
    /// A conditional read found the object changed (S3: HTTP 412).
    #[error("the object at {0} changed since it was checked")]
    PreconditionFailed(String),
    /// A bounded read found more bytes than it may take.
    #[error("the object is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A backend that may work on a later try: I/O, a locked database, throttling, a timeout.
    #[error("{backend} unavailable: {message}")]
    Unavailable { backend: &'static str, message: String },
}

impl PortError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PortError::Unavailable { .. })
    }

    /// What failed, without the adapter's message (which may hold a key or a path): for job
    /// records, events and logs.
    pub fn summary(&self) -> String {
        match self {
            PortError::NotFound(_) => "the object does not exist".into(),
            PortError::Gone(_) => "the connection is gone".into(),
            PortError::StaleReceipt | PortError::TooLarge { .. } => self.to_string(),
            PortError::PreconditionFailed(_) => "the object changed since it was checked".into(),
            PortError::Invalid { backend, .. } => format!("invalid request to {backend}"),
            PortError::Unavailable { backend, .. } => format!("{backend} unavailable"),
        }
    }

    pub fn unavailable(backend: &'static str, error: impl std::fmt::Display) -> PortError {
        PortError::Unavailable { backend, message: error.to_string() }
    }
}
