//! What every pipeline stage does around its own work: move the job into the stage (catching up a
//! previous stage whose finish was not yet recorded), write its outputs in order, and record the
//! stage finished with its artifacts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::artifacts::Artifact;
use crate::backends::Backends;
use crate::config::IrisConfig;
use crate::error_code::ErrorCode;
use crate::ids::JobId;
use crate::job::{JobRecord, Stage, StatsSummary, Transition};
use crate::keys::ObjectKey;
use crate::notification::stage_triggers;
use crate::ports::{ObjectMetadata, ObjectStore, PortError, ReceivedMessage, TransitionOutcome};
use crate::runtime::{JobLedger, MessageHandler, Outcome, stage_is_settled};
use crate::time::Timestamp;

/// What a stage handler needs besides its own logic.
#[derive(Clone)]
pub struct StageContext {
    pub objects: Arc<dyn ObjectStore>,
    pub ledger: JobLedger,
    /// Fault injection for crash tests (see `IRIS_FAULT_PAUSE_BEFORE_FINISH_MS`).
    pub pause_before_finish: Option<Duration>,
}

impl StageContext {
    /// The context of a stage running on `backends` with `config`'s settings.
    pub fn from_config(backends: &Backends, config: &IrisConfig) -> StageContext {
        StageContext {
            objects: Arc::clone(&backends.objects),
            ledger: backends.ledger(),
            pause_before_finish: config.fault_pause_before_finish,
        }
    }
}

/// Where a stage stands for a job when its message arrives.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStart {
    /// The job is now in this stage: do the work.
    Proceed(JobRecord),
    /// The stage already finished, or the job is terminal: nothing to do.
    Settled(JobRecord),
    /// No such job.
    UnknownJob,
}

/// The artifacts a finished stage has written, at their deterministic keys.
pub fn stage_artifacts(stage: Stage, job: &JobId) -> BTreeMap<Artifact, String> {
    Artifact::of_stage(stage).map(|artifact| (artifact, artifact.key(job).to_string())).collect()
}

/// Moves the job into `stage`. A stage is triggered by its predecessor's output object, which is
/// written before the predecessor records itself finished; if that record is not there yet, it is
/// written here (same transition, same event id), so subscribers see every status in order.
pub async fn begin_stage(
    ledger: &JobLedger,
    job_id: &JobId,
    stage: Stage,
    receive_count: u32,
    triggered_at: Option<Timestamp>,
) -> Result<StageStart, PortError> {
    let Some(job) = ledger.jobs.get(job_id).await? else { return Ok(StageStart::UnknownJob) };
    if stage_is_settled(job.status, stage) {
        // A repeat delivery of finished work: re-emit the stage's event (same id) in case the
        // earlier attempt died between recording and publishing, then ack.
        ledger
            .advance(
                job_id,
                Transition::to(stage.finished_status(), Timestamp::now(), receive_count),
                receive_count.max(2),
            )
            .await?;
        return Ok(StageStart::Settled(job));
    }
    if let Some(previous) = stage.previous() {
        if job.status.rank() < previous.finished_status().rank() {
            let catch_up = Transition::to(previous.finished_status(), Timestamp::now(), 0)
                .with_artifacts(stage_artifacts(previous, job_id));
            ledger.advance(job_id, catch_up, 1).await?;
        } else if job.status == previous.finished_status() {
            // The previous stage recorded its finish, but its event may still be on its way: the
            // previous stage publishes after writing, and this stage's start event could overtake
            // it. Publishing it again here (same stable id) puts it before this stage's start
            // event; consumers drop the duplicate by id (WebSocket subscribers by rank).
            ledger.publish(&job).await?;
        }
    }
    let start = Transition::to(stage.started_status(), Timestamp::now(), receive_count).triggered_at(triggered_at);
    match ledger.advance(job_id, start, receive_count).await? {
        TransitionOutcome::Applied(job) => Ok(StageStart::Proceed(job)),
        TransitionOutcome::Ignored(job) if job.status == stage.started_status() => Ok(StageStart::Proceed(job)),
        TransitionOutcome::Ignored(job) => Ok(StageStart::Settled(job)),
        TransitionOutcome::NotFound => Ok(StageStart::UnknownJob),
    }
}

/// [`begin_stage`] for a job output trigger, with the outcome for a job that is not to be worked
/// on: `Err(outcome)` when the stage is already settled (ack), the job is unknown (dead-letter) or
/// the job table failed.
pub async fn enter_stage(
    context: &StageContext,
    job_id: &JobId,
    stage: Stage,
    receive_count: u32,
    triggered_at: Option<Timestamp>,
) -> Result<JobRecord, Outcome> {
    match begin_stage(&context.ledger, job_id, stage, receive_count, triggered_at).await {
        Ok(StageStart::Proceed(job)) => Ok(job),
        Ok(StageStart::Settled(job)) => Err(Outcome::Skipped { reason: format!("job already {}", job.status) }),
        Ok(StageStart::UnknownJob) => Err(Outcome::Reject { reason: format!("no job {job_id}") }),
        Err(error) => Err(outcome_of_port_error(&error, job_id, stage, &format!("starting {stage}"))),
    }
}

/// Records the stage finished (after its outputs are written) and publishes the event.
pub async fn finish_stage(
    context: &StageContext,
    job_id: &JobId,
    stage: Stage,
    receive_count: u32,
    summary: StatsSummary,
) -> Result<(), PortError> {
    if let Some(pause) = context.pause_before_finish {
        tokio::time::sleep(pause).await;
    }
    let transition = Transition::to(stage.finished_status(), Timestamp::now(), receive_count)
        .with_artifacts(stage_artifacts(stage, job_id))
        .with_summary(summary);
    context.ledger.advance(job_id, transition, receive_count).await?;
    Ok(())
}

/// The outcome for a port error: retry what may pass, fail the job for the rest.
pub fn outcome_of_port_error(error: &PortError, job_id: &JobId, stage: Stage, what: &str) -> Outcome {
    match error {
        // Messages name the step and the backend, never the key or a path: an upload's key is its
        // file name, which may name the patient, and these messages reach the job record, events,
        // logs and dead-letter reasons.
        PortError::NotFound(_) => Outcome::Fail {
            job_id: job_id.clone(),
            stage: Some(stage),
            code: ErrorCode::MissingInput,
            message: format!("{what}: the object does not exist"),
        },
        error if error.is_retryable() => Outcome::Retry { reason: format!("{what}: {}", error.summary()) },
        error => Outcome::Fail {
            job_id: job_id.clone(),
            stage: Some(stage),
            code: ErrorCode::StorageError,
            message: format!("{what}: {}", error.summary()),
        },
    }
}

/// A stage started by a job output object (segment by `volume.nii.gz`, mesh by `labels.nii.gz`).
/// [`TriggeredStageHandler`] turns it into a queue message handler.
#[async_trait::async_trait]
pub trait TriggeredStage: Send + Sync {
    fn stage(&self) -> Stage;
    /// The job output whose creation starts the stage.
    fn trigger(&self) -> Artifact;
    /// Does the stage's work for one job.
    async fn run_job(&self, job_id: JobId, receive_count: u32, triggered_at: Option<Timestamp>) -> Outcome;
}

/// The queue message handler of a [`TriggeredStage`].
pub struct TriggeredStageHandler<S>(pub S);

#[async_trait::async_trait]
impl<S: TriggeredStage> MessageHandler for TriggeredStageHandler<S> {
    fn name(&self) -> &'static str {
        self.0.stage().as_str()
    }

    async fn process_one(&self, message: &ReceivedMessage) -> Outcome {
        let triggers = match stage_triggers(&message.body, self.0.trigger()) {
            Ok(Some(triggers)) if !triggers.is_empty() => triggers,
            Ok(_) => {
                return Outcome::Skipped { reason: format!("no {} in this notification", self.0.trigger().file()) };
            }
            Err(error) => return Outcome::Reject { reason: error.to_string() },
        };
        for trigger in triggers {
            let outcome = self.0.run_job(trigger.job_id, message.receive_count, trigger.triggered_at).await;
            if !matches!(outcome, Outcome::Done | Outcome::Skipped { .. }) {
                return outcome;
            }
        }
        Outcome::Done
    }

    fn job_of(&self, message: &ReceivedMessage) -> Option<(JobId, Option<Stage>)> {
        let trigger = stage_triggers(&message.body, self.0.trigger()).ok().flatten()?.into_iter().next()?;
        Some((trigger.job_id, Some(self.0.stage())))
    }
}

/// Writes a stage's outputs in order (the trigger of the next stage last), then records the stage
/// finished with what it found. The outcome of the first failure, or `Done`.
pub async fn write_outputs_and_finish(
    context: &StageContext,
    job_id: &JobId,
    stage: Stage,
    receive_count: u32,
    outputs: Vec<(ObjectKey, Vec<u8>)>,
    summary: StatsSummary,
) -> Outcome {
    let no_metadata = ObjectMetadata::new();
    for (key, body) in outputs {
        if let Err(error) = context.objects.put(&key, body, &no_metadata).await {
            return outcome_of_port_error(&error, job_id, stage, &format!("writing {key}"));
        }
    }
    match finish_stage(context, job_id, stage, receive_count, summary).await {
        Ok(()) => Outcome::Done,
        Err(error) => outcome_of_port_error(&error, job_id, stage, &format!("recording {stage} finished")),
    }
}

/// The outcome for bad input: the job fails at once with `code`.
pub fn failure(job_id: &JobId, stage: Stage, code: ErrorCode, message: String) -> Outcome {
    Outcome::Fail { job_id: job_id.clone(), stage: Some(stage), code, message }
}

/// The outcome when a stage's computation panicked (a bug): the job fails with `internal_error`
/// at once instead of crashing again on every redelivery.
pub fn outcome_of_task_panic(error: &tokio::task::JoinError, job_id: &JobId, stage: Stage) -> Outcome {
    tracing::error!(job_id = %job_id, %stage, %error, "stage computation panicked");
    Outcome::Fail {
        job_id: job_id.clone(),
        stage: Some(stage),
        code: ErrorCode::InternalError,
        message: "the pipeline hit an internal error while processing this study".into(),
    }
}
