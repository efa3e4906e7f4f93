//! The worker runtime shared by every service: a stage supplies `process_one(message) -> Outcome`,
//! the runtime owns polling, visibility heartbeats, retries with backoff, dead-lettering, acking and
//! graceful shutdown.
//!
//! Delivery is at least once. The runtime acks a message only after `process_one` returned an
//! outcome that settles it; on shutdown it stops receiving, lets in-flight work finish, and never
//! acks unfinished work (a killed process simply leaves its messages to reappear after the timeout).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::error_code::ErrorCode;
use crate::events::{EventEnvelope, JobEventDetail};
use crate::ids::JobId;
use crate::job::{JobError, JobRecord, JobStatus, Stage, Transition};
use crate::ports::{EventBus, JobStore, PortError, ReceivedMessage, TransitionOutcome, WorkQueue};
use crate::time::Timestamp;

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Work done (or found already done): ack.
    Done,
    /// Nothing to do (e.g. S3's test event): ack.
    Skipped { reason: String },
    /// A transient failure: leave the message to be redelivered after a backoff.
    Retry { reason: String },
    /// Bad input: the job fails at once with this code, and the message is acked.
    Fail { job_id: JobId, stage: Option<Stage>, code: ErrorCode, message: String },
    /// The message itself is unusable (malformed body, unknown job): straight to the dead-letter queue.
    Reject { reason: String },
}

/// One stage's message handling.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Short name for logs ("ingest", "segment", …).
    fn name(&self) -> &'static str;
    async fn process_one(&self, message: &ReceivedMessage) -> Outcome;
    /// The job and stage a message concerns, so the runtime can fail the job when the message
    /// is given up (retries exhausted, or the handler panicked).
    fn job_of(&self, message: &ReceivedMessage) -> Option<(JobId, Option<Stage>)>;
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Messages processed at once by this worker.
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    /// How often in-flight messages get their visibility extended; well under the timeout.
    pub heartbeat_interval: Duration,
    /// Long-poll wait per receive call.
    pub receive_wait: Duration,
    /// Deliveries of a message before it is given up (dead-lettered, job FAILED `retries_exhausted`).
    pub max_attempts: u32,
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    /// Longest a message may be worked on; past it the job fails with `timed_out`.
    pub processing_limit: Duration,
}

/// Applies job transitions and publishes the matching events: the one place that does both.
#[derive(Clone)]
pub struct JobLedger {
    pub jobs: Arc<dyn JobStore>,
    pub events: Arc<dyn EventBus>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 1,
            visibility_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            receive_wait: Duration::from_secs(1),
            max_attempts: 8,
            retry_backoff_base: Duration::from_secs(5),
            retry_backoff_max: Duration::from_secs(300),
            processing_limit: Duration::from_secs(30 * 60),
        }
    }
}

impl WorkerSettings {
    /// The wait before the retry after delivery `receive_count`, without jitter: the base,
    /// doubling with each delivery, capped at `retry_backoff_max`.
    pub fn nominal_backoff_for(&self, receive_count: u32) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(16);
        self.retry_backoff_base.saturating_mul(1 << exponent).min(self.retry_backoff_max)
    }

    /// The wait actually used: "equal jitter" (half the nominal wait plus a uniformly random part
    /// of the other half), so workers that failed together do not retry together.
    pub fn backoff_for(&self, receive_count: u32) -> Duration {
        jittered(self.nominal_backoff_for(receive_count), rand::random::<f64>())
    }
}

/// `nominal` scaled into `[nominal / 2, nominal]` by `unit` in `[0, 1)`.
fn jittered(nominal: Duration, unit: f64) -> Duration {
    nominal.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

impl JobLedger {
    /// Moves the job to `transition.to` and publishes the event for it. When the transition is a
    /// no-op because the job is already exactly there and this is a redelivery, the event is sent
    /// again (same stable id): the earlier attempt may have died between the write and the publish.
    pub async fn advance(
        &self,
        job_id: &JobId,
        transition: Transition,
        receive_count: u32,
    ) -> Result<TransitionOutcome, PortError> {
        let outcome = self.jobs.transition(job_id, &transition).await?;
        match &outcome {
            TransitionOutcome::Applied(job) => self.publish(job).await?,
            TransitionOutcome::Ignored(job) if receive_count > 1 && job.status == transition.to => {
                self.publish(job).await?
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Publishes the event for the job's current status.
    pub async fn publish(&self, job: &JobRecord) -> Result<(), PortError> {
        self.events.publish(&[EventEnvelope::new(JobEventDetail::from_job(job))]).await
    }

    /// Fails the job (if it is not already terminal) with a code and message.
    pub async fn fail(
        &self,
        job_id: &JobId,
        stage: Option<Stage>,
        code: ErrorCode,
        message: &str,
        receive_count: u32,
    ) -> Result<TransitionOutcome, PortError> {
        let error = JobError { stage, code, message: message.to_owned() };
        self.advance(job_id, Transition::failed(error, Timestamp::now(), receive_count), receive_count).await
    }
}

/// Runs a worker until `shutdown` is cancelled, then waits for in-flight messages to settle.
pub async fn run_worker(
    handler: Arc<dyn MessageHandler>,
    queue: Arc<dyn WorkQueue>,
    ledger: JobLedger,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..settings.concurrency.max(1) {
        let handler = Arc::clone(&handler);
        let queue = Arc::clone(&queue);
        let ledger = ledger.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("worker", stage = handler.name(), lane);
        lanes.spawn(async move { run_lane(handler, queue, ledger, settings, shutdown).await }.instrument(span));
    }
    while lanes.join_next().await.is_some() {}
    info!(stage = handler.name(), "worker stopped");
}

async fn run_lane(
    handler: Arc<dyn MessageHandler>,
    queue: Arc<dyn WorkQueue>,
    ledger: JobLedger,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    let mut failures_in_a_row = 0u32;
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = queue.receive(1, settings.visibility_timeout, settings.receive_wait) => received,
        };
        let messages = match received {
            Ok(messages) => {
                failures_in_a_row = 0;
                messages
            }
            Err(error) => {
                failures_in_a_row += 1;
                let pause = settings.backoff_for(failures_in_a_row);
                warn!(queue = queue.name(), %error, pause_ms = pause.as_millis() as u64, "receive failed; pausing");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(pause) => continue }
            }
        };
        for message in messages {
            // In-flight work is finished even when shutdown is requested meanwhile.
            handle_message(&handler, &queue, &ledger, &settings, message).await;
        }
    }
}

async fn handle_message(
    handler: &Arc<dyn MessageHandler>,
    queue: &Arc<dyn WorkQueue>,
    ledger: &JobLedger,
    settings: &WorkerSettings,
    message: ReceivedMessage,
) {
    if message.receive_count > settings.max_attempts {
        // Delivered again after the last allowed attempt never settled (a crash or a hang).
        let reason = format!(
            "the {} stage did not finish this message after {} attempts (the worker may have crashed)",
            handler.name(),
            settings.max_attempts
        );
        give_up(handler, queue, ledger, &message, &reason).await;
        return;
    }
    let cancellation = crate::cancel::CancellationToken::new();
    let work = {
        let handler = Arc::clone(handler);
        let message = message.clone();
        let cancellation = cancellation.clone();
        tokio::spawn(crate::cancel::scope(cancellation, async move { handler.process_one(&message).await }))
    };
    let outcome = match with_heartbeat(work, &cancellation, queue, &message, settings).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => {
            error!(stage = handler.name(), message_id = %message.message_id, limit_s = settings.processing_limit.as_secs(), "processing limit reached");
            match handler.job_of(&message) {
                Some((job_id, stage)) => Outcome::Fail {
                    job_id,
                    stage,
                    code: ErrorCode::TimedOut,
                    message: format!(
                        "the {} stage took longer than its limit of {} s for this study",
                        handler.name(),
                        settings.processing_limit.as_secs()
                    ),
                },
                None => Outcome::Reject { reason: "processing limit reached".into() },
            }
        }
        Err(panic) => {
            error!(stage = handler.name(), message_id = %message.message_id, %panic, "handler panicked");
            match handler.job_of(&message) {
                Some((job_id, stage)) => Outcome::Fail {
                    job_id,
                    stage,
                    code: ErrorCode::InternalError,
                    message: "the pipeline hit an internal error while processing this study".to_owned(),
                },
                None => Outcome::Reject { reason: format!("handler panicked: {panic}") },
            }
        }
    };
    settle(handler, queue, ledger, settings, &message, outcome).await;
}

/// Awaits the work while extending the message's visibility every heartbeat interval; `None` when
/// the processing limit passed first: the message's token is cancelled (its blocking work stops at
/// its next check, see [`crate::cancel`]) and the task is aborted.
async fn with_heartbeat(
    mut work: tokio::task::JoinHandle<Outcome>,
    cancellation: &crate::cancel::CancellationToken,
    queue: &Arc<dyn WorkQueue>,
    message: &ReceivedMessage,
    settings: &WorkerSettings,
) -> Result<Option<Outcome>, tokio::task::JoinError> {
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.tick().await;
    let deadline = tokio::time::sleep(settings.processing_limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut work => return result.map(Some),
            _ = &mut deadline => {
                cancellation.cancel();
                work.abort();
                return Ok(None);
            }
            _ = heartbeat.tick() => {
                if let Err(error) = queue.extend_visibility(&message.receipt, settings.visibility_timeout).await {
                    warn!(message_id = %message.message_id, %error, "visibility heartbeat failed");
                }
            }
        }
    }
}

async fn settle(
    handler: &Arc<dyn MessageHandler>,
    queue: &Arc<dyn WorkQueue>,
    ledger: &JobLedger,
    settings: &WorkerSettings,
    message: &ReceivedMessage,
    outcome: Outcome,
) {
    match outcome {
        Outcome::Done => ack(queue, message).await,
        Outcome::Skipped { reason } => {
            info!(stage = handler.name(), message_id = %message.message_id, reason, "message skipped");
            ack(queue, message).await;
        }
        Outcome::Retry { reason } => {
            if message.receive_count >= settings.max_attempts {
                let reason = format!("gave up after {} attempts; last error: {reason}", message.receive_count);
                give_up(handler, queue, ledger, message, &reason).await;
            } else {
                let backoff = settings.backoff_for(message.receive_count);
                warn!(stage = handler.name(), message_id = %message.message_id, attempt = message.receive_count,
                      backoff_ms = backoff.as_millis() as u64, reason, "retrying later");
                if let Err(error) = queue.extend_visibility(&message.receipt, backoff).await {
                    warn!(message_id = %message.message_id, %error, "could not schedule retry; it reappears after the visibility timeout");
                }
            }
        }
        Outcome::Fail { job_id, stage, code, message: text } => {
            warn!(stage = handler.name(), job_id = %job_id, code = code.as_str(), "job failed");
            match ledger.fail(&job_id, stage, code, &text, message.receive_count).await {
                Ok(_) => ack(queue, message).await,
                Err(error) => {
                    warn!(job_id = %job_id, %error, "could not record the failure; message will be redelivered")
                }
            }
        }
        Outcome::Reject { reason } => {
            warn!(stage = handler.name(), message_id = %message.message_id, reason, "message rejected to the dead-letter queue");
            if let Err(error) = queue.dead_letter(message, &reason).await {
                warn!(message_id = %message.message_id, %error, "could not dead-letter; it will be redelivered");
            }
        }
    }
}

/// Dead-letters the message and fails its job with `retries_exhausted`.
async fn give_up(
    handler: &Arc<dyn MessageHandler>,
    queue: &Arc<dyn WorkQueue>,
    ledger: &JobLedger,
    message: &ReceivedMessage,
    reason: &str,
) {
    if let Some((job_id, stage)) = handler.job_of(message) {
        let text = format!("processing failed repeatedly and was stopped: {reason}");
        if let Err(error) = ledger.fail(&job_id, stage, ErrorCode::RetriesExhausted, &text, message.receive_count).await
        {
            warn!(job_id = %job_id, %error, "could not mark job failed; message will be redelivered");
            return;
        }
        error!(stage = handler.name(), job_id = %job_id, "retries exhausted; job failed and message dead-lettered");
    }
    if let Err(error) = queue.dead_letter(message, reason).await {
        warn!(message_id = %message.message_id, %error, "could not dead-letter");
    }
}

async fn ack(queue: &Arc<dyn WorkQueue>, message: &ReceivedMessage) {
    match queue.ack(&message.receipt).await {
        Ok(()) => {}
        Err(PortError::StaleReceipt) => {
            warn!(message_id = %message.message_id, "ack after redelivery: another delivery owns the message now")
        }
        Err(error) => warn!(message_id = %message.message_id, %error, "ack failed; the message will be redelivered"),
    }
}

/// Whether a job at `status` has finished `stage` (or can no longer run it).
pub fn stage_is_settled(status: JobStatus, stage: Stage) -> bool {
    status.is_terminal() || status.rank() >= stage.finished_status().rank()
}

/// Resolves when SIGINT or SIGTERM arrives, cancelling `token`: the services' shutdown signal.
pub fn cancel_on_shutdown_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("shutdown requested: finishing in-flight work");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = WorkerSettings {
            retry_backoff_base: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(700),
            ..WorkerSettings::default()
        };
        let waits: Vec<u128> = (1..=5).map(|n| settings.nominal_backoff_for(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 700, 700]);
        for n in 1..=5 {
            let nominal = settings.nominal_backoff_for(n);
            let waits: Vec<Duration> = (0..64).map(|_| settings.backoff_for(n)).collect();
            assert!(waits.iter().all(|w| *w >= nominal / 2 && *w <= nominal), "delivery {n}: {waits:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "delivery {n}: the waits are jittered: {waits:?}");
        }
        assert_eq!(jittered(Duration::from_secs(10), 0.0), Duration::from_secs(5));
        assert_eq!(jittered(Duration::from_secs(10), 0.5), Duration::from_millis(7500));
    }
}
