//! The notification logic shared by the notify queue consumer, the local gateway and (in AWS)
//! the WebSocket route Lambda: routing client actions, and delivering job states to subscribers
//! in order, each once, only to the job's own user.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use iris_core::events::JobEventDetail;
use iris_core::ids::JobId;
use iris_core::ports::{Connection, ConnectionGateway, ConnectionStore, JobStore, PortError};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::protocol::{ClientMessage, JobSummary, ServerMessage};

pub struct NotifyCore {
    pub jobs: Arc<dyn JobStore>,
    pub connections: Arc<dyn ConnectionStore>,
    pub gateway: Arc<dyn ConnectionGateway>,
    /// One lock per connection: serialises "record as delivered, then post" so two deliveries
    /// to one subscriber cannot overtake each other within this process, while deliveries to
    /// different connections go out concurrently.
    connection_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// How many of a user's jobs `list` returns.
pub const LIST_LIMIT: usize = 50;

/// Jobs one connection may follow at once; a subscribe past it is refused with
/// `too_many_subscriptions` (two subscribes racing on one connection may pass it by one).
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 100;

/// Posts of one event that are in flight at once (fan-out to many subscribers).
pub const FAN_OUT_CONCURRENCY: usize = 32;

impl NotifyCore {
    pub fn new(
        jobs: Arc<dyn JobStore>,
        connections: Arc<dyn ConnectionStore>,
        gateway: Arc<dyn ConnectionGateway>,
    ) -> NotifyCore {
        NotifyCore { jobs, connections, gateway, connection_locks: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Sends a job's new state to every subscriber of the job who belongs to the job's user, up to
    /// [`FAN_OUT_CONCURRENCY`] connections at once. Returns how many connections it was sent to.
    ///
    /// Queues do not promise order (SQS standard queues reorder, and a message can be lost to a
    /// dead-letter queue), so the job record, read with each state event, fills in what the
    /// subscriber has not had: every state of the job's current run between the subscriber's last
    /// one and the newest of the event and the record ([`JobEventDetail::states_of_run`]), in
    /// order, each once. A state older than the subscriber's is dropped; the final state reaches
    /// every subscriber with the first event handled after it was recorded, whichever that is.
    ///
    /// When a post fails with a retryable error, every other subscriber is still served and the
    /// error is returned, so the event is redelivered: subscribers that already have a state do
    /// not get it again (`advance_delivery`), the failed one does.
    pub async fn deliver(&self, event: &JobEventDetail) -> Result<usize, PortError> {
        let subscribers = self.connections.subscribers(&event.job_id).await?;
        let own: Vec<_> = subscribers
            .into_iter()
            .filter(|subscription| {
                let own = subscription.user_id == event.user_id;
                if !own {
                    warn!(job_id = %event.job_id, connection_id = %subscription.connection_id, "subscriber of another user: not sent");
                }
                own
            })
            .collect();
        if own.is_empty() {
            return Ok(0);
        }
        let states = if event.progress.is_some() { Vec::new() } else { self.states_to_send(event).await? };
        let states = &states;
        let results: Vec<Result<bool, PortError>> = futures_util::stream::iter(own)
            .map(|subscription| async move {
                if event.progress.is_some() {
                    return self.send_progress(&subscription.connection_id, event).await;
                }
                let mut sent = false;
                let mut previous = subscription.delivered_position;
                for state in states.iter().filter(|state| state.delivery_position() > subscription.delivered_position) {
                    if self.send_state(&subscription.connection_id, previous, state).await? {
                        sent = true;
                        previous = state.delivery_position();
                    }
                }
                Ok(sent)
            })
            .buffer_unordered(FAN_OUT_CONCURRENCY)
            .collect()
            .await;
        let mut sent = 0;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(true) => sent += 1,
                Ok(false) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(sent),
        }
    }

    /// The event's state and the job record's states that follow it or fill a gap before it, in
    /// delivery order, one per position (the event's own where the record has the same).
    async fn states_to_send(&self, event: &JobEventDetail) -> Result<Vec<JobEventDetail>, PortError> {
        let mut states = vec![event.clone()];
        if let Some(job) = self.jobs.get(&event.job_id).await? {
            states.extend(
                JobEventDetail::states_of_run(&job)
                    .into_iter()
                    .filter(|state| state.delivery_position() != event.delivery_position()),
            );
        }
        states.sort_by_key(JobEventDetail::delivery_position);
        Ok(states)
    }

    fn connection_lock(&self, connection_id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.connection_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget the locks nobody holds, so the map does not grow with every connection ever seen.
        if locks.len() > 4 * FAN_OUT_CONCURRENCY {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Arc::clone(locks.entry(connection_id.to_owned()).or_default())
    }

    /// Sends `event` to one connection unless it already got this state or a later one.
    /// `previous_position` is what the subscription had been sent before; a post that fails with a
    /// retryable error puts it back, so the retry sends the state again.
    async fn send_state(
        &self,
        connection_id: &str,
        previous_position: u32,
        event: &JobEventDetail,
    ) -> Result<bool, PortError> {
        let lock = self.connection_lock(connection_id);
        let _guard = lock.lock().await;
        let position = event.delivery_position();
        if !self.connections.advance_delivery(connection_id, &event.job_id, position).await? {
            debug!(connection_id, status = %event.status, "already delivered");
            return Ok(false);
        }
        let payload = ServerMessage::job_state(event.clone()).to_json();
        match self.post(connection_id, &payload).await {
            Err(error) if error.is_retryable() => {
                self.connections.release_delivery(connection_id, &event.job_id, position, previous_position).await?;
                Err(error)
            }
            other => other,
        }
    }

    /// Sends a progress event as it is: progress is advisory and not recorded per subscriber.
    async fn send_progress(&self, connection_id: &str, event: &JobEventDetail) -> Result<bool, PortError> {
        let payload = ServerMessage::Progress { job_id: event.job_id.clone(), event: event.clone() }.to_json();
        self.post(connection_id, &payload).await
    }

    /// Posts to one connection; a connection that is gone is removed (false).
    pub(crate) async fn post(&self, connection_id: &str, payload: &str) -> Result<bool, PortError> {
        match self.gateway.post_to_connection(connection_id, payload).await {
            Ok(()) => Ok(true),
            Err(PortError::Gone(_)) => {
                info!(connection_id, "connection gone: removed");
                self.connections.remove_connection(connection_id).await?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Handles one client action; returns the replies for the caller (a subscribe's current
    /// state is sent through the delivery path instead, so it is ordered with pushed states).
    pub async fn handle_client_message(&self, connection: &Connection, message: ClientMessage) -> Vec<ServerMessage> {
        match self.route(connection, message).await {
            Ok(replies) => replies,
            Err(error) => {
                warn!(connection_id = %connection.connection_id, %error, "client request failed");
                vec![ServerMessage::error("unavailable", "the request could not be served; try again")]
            }
        }
    }

    async fn route(&self, connection: &Connection, message: ClientMessage) -> Result<Vec<ServerMessage>, PortError> {
        match message {
            ClientMessage::Subscribe { job_id } => {
                let Ok(job_id) = JobId::parse(&job_id) else {
                    return Ok(vec![ServerMessage::error("bad_request", "jobId must be 32 lowercase hex characters")]);
                };
                let owner = self.jobs.get(&job_id).await?;
                if let Some(job) = &owner
                    && job.user_id != connection.user_id
                {
                    return Ok(vec![ServerMessage::error("forbidden", "you may subscribe only to your own jobs")]);
                }
                if self.connections.subscription_count(&connection.connection_id).await?
                    >= MAX_SUBSCRIPTIONS_PER_CONNECTION
                    && !self
                        .connections
                        .subscribers(&job_id)
                        .await?
                        .iter()
                        .any(|s| s.connection_id == connection.connection_id)
                {
                    return Ok(vec![ServerMessage::error(
                        "too_many_subscriptions",
                        format!(
                            "a connection may follow at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} jobs at once; unsubscribe from one first"
                        ),
                    )]);
                }
                self.connections.subscribe(&connection.connection_id, &job_id).await?;
                let reply = ServerMessage::Subscribed { job_id: job_id.clone() };
                // The current state is read after the subscription is written: a state recorded
                // before this read is sent here, one recorded after it finds the subscription.
                let current = if owner.is_some() { self.jobs.get(&job_id).await? } else { None };
                if let Some(job) = current {
                    // Acknowledge first, then the current state through the ordered delivery path.
                    self.gateway.post_to_connection(&connection.connection_id, &reply.to_json()).await?;
                    let previous_position = self
                        .connections
                        .subscribers(&job_id)
                        .await?
                        .into_iter()
                        .find(|s| s.connection_id == connection.connection_id)
                        .map_or(0, |s| s.delivered_position);
                    self.send_state(&connection.connection_id, previous_position, &JobEventDetail::from_job(&job))
                        .await?;
                    return Ok(Vec::new());
                }
                Ok(vec![reply])
            }
            ClientMessage::Unsubscribe { job_id } => {
                let Ok(job_id) = JobId::parse(&job_id) else {
                    return Ok(vec![ServerMessage::error("bad_request", "jobId must be 32 lowercase hex characters")]);
                };
                self.connections.unsubscribe(&connection.connection_id, &job_id).await?;
                Ok(vec![ServerMessage::Unsubscribed { job_id }])
            }
            ClientMessage::List => {
                let jobs = self.jobs.list_by_user(&connection.user_id, LIST_LIMIT).await?;
                Ok(vec![ServerMessage::Jobs { jobs: jobs.iter().map(JobSummary::of).collect() }])
            }
        }
    }
}
