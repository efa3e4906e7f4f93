//! Pipeline events (source `iris.pipeline`) and their EventBridge envelope.
//!
//! Every event has a stable id, `<jobId>:<STATUS>` (`<jobId>:run<n>:<STATUS>` from a job's second
//! run on), so a subscriber drops duplicates by id: a stage that re-emits after a redelivery sends
//! the same id again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;
use crate::ids::{JobId, UserId};
use crate::job::{JobError, JobRecord, JobStatus, Stage, StatsSummary};
use crate::time::Timestamp;

pub const EVENT_SOURCE: &str = "iris.pipeline";
pub const EVENT_DETAIL_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailType {
    JobStateChanged,
    JobCompleted,
    JobFailed,
    /// Advisory progress inside a long stage (e.g. segmentation tiles); no state change.
    JobProgress,
}

/// An event as an EventBridge rule delivers it to an SQS target (the same JSON in embedded mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub version: String,
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: DetailType,
    pub source: String,
    pub time: Timestamp,
    #[serde(default)]
    pub resources: Vec<String>,
    pub detail: JobEventDetail,
}

/// What every pipeline event says about its job. No patient identifiers: ids, status, keys, timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEventDetail {
    pub version: u32,
    /// Stable id: `<jobId>:<STATUS>`, or `<jobId>:run<n>:<STATUS>` for run `n` > 1.
    pub event_id: String,
    pub job_id: JobId,
    /// The job's run (1 unless a failed job was re-opened by a new upload of the same bytes).
    #[serde(default = "first_run")]
    pub run: u32,
    pub user_id: UserId,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default)]
    pub artifacts: BTreeMap<Artifact, String>,
    /// Milliseconds per finished stage.
    #[serde(default)]
    pub timings_ms: BTreeMap<Stage, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// What the stages found so far (complete on `JobCompleted`): source format, dimensions,
    /// spacing, model, structures, meshes, triangles. Technical facts only.
    #[serde(default, skip_serializing_if = "StatsSummary::is_empty")]
    pub summary: StatsSummary,
    /// Only on `JobProgress` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StageProgress>,
    pub occurred_at: Timestamp,
}

/// How far a stage has got: `done` of `total` units (e.g. tiles) of step `step` of `steps`
/// (e.g. the second of five models).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageProgress {
    pub done: u64,
    pub total: u64,
    pub unit: String,
    pub step: u32,
    pub steps: u32,
}

impl DetailType {
    pub fn for_status(status: JobStatus) -> DetailType {
        match status {
            JobStatus::Completed => DetailType::JobCompleted,
            JobStatus::Failed => DetailType::JobFailed,
            _ => DetailType::JobStateChanged,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DetailType::JobStateChanged => "JobStateChanged",
            DetailType::JobCompleted => "JobCompleted",
            DetailType::JobFailed => "JobFailed",
            DetailType::JobProgress => "JobProgress",
        }
    }
}

pub fn stable_event_id(job_id: &JobId, run: u32, status: JobStatus) -> String {
    if run <= 1 { format!("{job_id}:{status}") } else { format!("{job_id}:run{run}:{status}") }
}

fn first_run() -> u32 {
    1
}

impl JobEventDetail {
    /// The event announcing that `job` reached its current status.
    pub fn from_job(job: &JobRecord) -> JobEventDetail {
        JobEventDetail {
            version: EVENT_DETAIL_VERSION,
            event_id: stable_event_id(&job.job_id, job.run, job.status),
            job_id: job.job_id.clone(),
            run: job.run,
            user_id: job.user_id.clone(),
            status: job.status,
            stage: job.status.stage().or(job.error.as_ref().and_then(|e| e.stage)),
            artifacts: job.artifacts.clone(),
            timings_ms: job.stage_durations_ms(),
            error: job.error.clone(),
            summary: job.summary.clone(),
            progress: None,
            occurred_at: job.updated_at,
        }
    }

    /// Every state the job has been in during its current run, oldest first, each as the event
    /// announcing it said it (same id, time, artifacts, timings and summary): what a subscriber
    /// that missed some of them is sent again, in order ([`JobEventDetail::from_job`] is the last).
    /// A FAILED run gives the states before the failing stage, then FAILED.
    pub fn states_of_run(job: &JobRecord) -> Vec<JobEventDetail> {
        let reached: Vec<JobStatus> = match job.status {
            JobStatus::Failed => {
                let failing = job.error.as_ref().and_then(|e| e.stage);
                let last_finished = failing.and_then(Stage::previous);
                let limit = last_finished.map_or(JobStatus::Received.rank(), |s| s.finished_status().rank());
                let mut reached: Vec<JobStatus> = JobStatus::ALL.into_iter().filter(|s| s.rank() <= limit).collect();
                // The failing stage's start, if it started.
                if let Some(stage) = failing.filter(|s| job.stages.get(s).is_some_and(|r| r.started_at.is_some())) {
                    reached.push(stage.started_status());
                }
                reached
            }
            current => JobStatus::ALL.into_iter().filter(|s| s.rank() <= current.rank()).collect(),
        };
        let mut states: Vec<JobEventDetail> = reached.into_iter().filter_map(|status| state_at(job, status)).collect();
        if job.status == JobStatus::Failed {
            states.push(JobEventDetail::from_job(job));
        }
        states
    }

    /// A progress event of `job` (in its current status), id `<jobId>:<STATUS>:progress:<step>:<done>`.
    pub fn progress_of(job: &JobRecord, progress: StageProgress, at: Timestamp) -> JobEventDetail {
        let mut detail = JobEventDetail::from_job(job);
        detail.event_id = format!("{}:progress:{}:{}", detail.event_id, progress.step, progress.done);
        detail.progress = Some(progress);
        detail.occurred_at = at;
        detail
    }

    /// Where this state stands in the order subscribers see a job's states in.
    pub fn delivery_position(&self) -> u32 {
        crate::job::delivery_position(self.run, self.status)
    }

    pub fn detail_type(&self) -> DetailType {
        if self.progress.is_some() { DetailType::JobProgress } else { DetailType::for_status(self.status) }
    }
}

/// The event the job's current run sent when it reached `status` (not FAILED), rebuilt from the
/// record; `None` when the record lacks the time it happened.
fn state_at(job: &JobRecord, status: JobStatus) -> Option<JobEventDetail> {
    let finished = |stage: Stage| stage.finished_status().rank() <= status.rank();
    let occurred_at = match status {
        JobStatus::Received => job.run_started_at.unwrap_or(job.created_at),
        JobStatus::Failed => return None,
        _ => {
            let stage = status.stage()?;
            let record = job.stages.get(&stage)?;
            if status == stage.started_status() { record.started_at? } else { record.ended_at? }
        }
    };
    let mut summary = StatsSummary::default();
    if finished(Stage::Ingest) {
        summary.source_format = job.summary.source_format.clone();
        summary.dims = job.summary.dims;
        summary.spacing_mm = job.summary.spacing_mm;
    }
    if finished(Stage::Segment) {
        summary.model = job.summary.model.clone();
        summary.structures = job.summary.structures;
    }
    if finished(Stage::Mesh) {
        summary.meshes = job.summary.meshes;
        summary.triangles = job.summary.triangles;
    }
    let mut detail = JobEventDetail::from_job(job);
    detail.event_id = stable_event_id(&job.job_id, job.run, status);
    detail.status = status;
    detail.stage = status.stage();
    detail.artifacts.retain(|artifact, _| finished(artifact.stage()));
    detail.timings_ms.retain(|stage, _| finished(*stage));
    detail.error = None;
    detail.summary = summary;
    detail.occurred_at = occurred_at;
    Some(detail)
}

impl EventEnvelope {
    pub fn new(detail: JobEventDetail) -> EventEnvelope {
        EventEnvelope {
            version: "0".to_owned(),
            id: detail.event_id.clone(),
            detail_type: detail.detail_type(),
            source: EVENT_SOURCE.to_owned(),
            time: detail.occurred_at,
            resources: Vec::new(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobError, Transition};

    fn upload() -> crate::job::UploadSource {
        crate::job::UploadSource { bucket: "b".into(), key: "uploads/u/x".into(), etag: "e".into(), version_id: None }
    }

    /// A job walked up the ladder the way the stages do (each stage's finish with its artifacts
    /// and summary), collecting the event each step published.
    fn walk(job: &mut JobRecord, to: JobStatus, published: &mut Vec<JobEventDetail>) {
        let mut at = job.updated_at.epoch_millis();
        let from = job.status.rank();
        for status in JobStatus::ALL.into_iter().filter(|s| s.rank() > from && s.rank() <= to.rank()) {
            at += 1000;
            let mut transition = Transition::to(status, Timestamp::from_epoch_millis(at), 1);
            if let Some(stage) = status.stage().filter(|stage| stage.finished_status() == status) {
                transition = transition
                    .with_artifacts(Artifact::of_stage(stage).map(|a| (a, format!("jobs/x/{}", a.file()))).collect());
                transition.summary = match stage {
                    Stage::Ingest => StatsSummary {
                        source_format: Some("nifti".into()),
                        dims: Some([1, 2, 3]),
                        ..StatsSummary::default()
                    },
                    Stage::Segment => {
                        StatsSummary { model: Some("m".into()), structures: Some(3), ..StatsSummary::default() }
                    }
                    Stage::Mesh => StatsSummary { meshes: Some(3), triangles: Some(99), ..StatsSummary::default() },
                };
            }
            *job = job.advanced(&transition).expect("forward");
            published.push(JobEventDetail::from_job(job));
        }
    }

    #[test]
    fn the_states_of_a_run_are_the_events_it_published() {
        let mut job = JobRecord::received(
            &upload(),
            UserId::parse("u").unwrap(),
            BTreeMap::new(),
            Timestamp::from_epoch_millis(1_700_000_000_000),
        );
        let mut published = vec![JobEventDetail::from_job(&job)];
        for checkpoint in [JobStatus::Ingesting, JobStatus::Segmented, JobStatus::Completed] {
            walk(&mut job, checkpoint, &mut published);
            assert_eq!(JobEventDetail::states_of_run(&job), published, "at {checkpoint}");
        }

        let mut failing = JobRecord::received(
            &upload(),
            UserId::parse("u").unwrap(),
            BTreeMap::new(),
            Timestamp::from_epoch_millis(1_700_000_000_000),
        );
        let mut published = vec![JobEventDetail::from_job(&failing)];
        walk(&mut failing, JobStatus::Segmenting, &mut published);
        let error = JobError { stage: Some(Stage::Segment), code: crate::ErrorCode::CorruptFile, message: "m".into() };
        failing =
            failing.advanced(&Transition::failed(error, Timestamp::from_epoch_millis(1_700_000_099_000), 1)).unwrap();
        let states = JobEventDetail::states_of_run(&failing);
        let statuses: Vec<JobStatus> = states.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            [JobStatus::Received, JobStatus::Ingesting, JobStatus::Ingested, JobStatus::Segmenting, JobStatus::Failed]
        );
        assert_eq!(&states[..4], &published[..4], "the states up to the failing stage's start, as published");
        assert_eq!(states[4], JobEventDetail::from_job(&failing));
        // A stage that failed before it started (retries exhausted at RECEIVED) has no start.
        let mut never_started = JobRecord::received(
            &upload(),
            UserId::parse("u").unwrap(),
            BTreeMap::new(),
            Timestamp::from_epoch_millis(1_700_000_000_000),
        );
        let error =
            JobError { stage: Some(Stage::Ingest), code: crate::ErrorCode::RetriesExhausted, message: "m".into() };
        never_started = never_started
            .advanced(&Transition::failed(error, Timestamp::from_epoch_millis(1_700_000_001_000), 4))
            .unwrap();
        let statuses: Vec<JobStatus> = JobEventDetail::states_of_run(&never_started).iter().map(|s| s.status).collect();
        assert_eq!(statuses, [JobStatus::Received, JobStatus::Failed]);

        let second = failing.reopened(Timestamp::from_epoch_millis(1_700_000_200_000)).unwrap();
        let states = JobEventDetail::states_of_run(&second);
        assert_eq!(states, vec![JobEventDetail::from_job(&second)], "a new run starts from RECEIVED alone");
        assert_eq!(states[0].occurred_at, Timestamp::from_epoch_millis(1_700_000_200_000));
        assert!(states[0].delivery_position() > JobEventDetail::from_job(&failing).delivery_position());
    }

    #[test]
    fn envelope_has_eventbridge_field_names_and_a_stable_id() {
        let at = Timestamp::from_epoch_millis(1_700_000_000_000);
        let upload = crate::job::UploadSource {
            bucket: "b".into(),
            key: "uploads/u/x".into(),
            etag: "e".into(),
            version_id: None,
        };
        let mut job = JobRecord::received(&upload, UserId::parse("u").unwrap(), BTreeMap::new(), at);
        job.status = JobStatus::Completed;
        let envelope = EventEnvelope::new(JobEventDetail::from_job(&job));
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(value["detail-type"], "JobCompleted");
        assert_eq!(value["source"], "iris.pipeline");
        assert_eq!(value["detail"]["eventId"], format!("{}:COMPLETED", job.job_id));
        assert_eq!(value["detail"]["stage"], "mesh");
        let back: EventEnvelope = serde_json::from_value(value).unwrap();
        assert_eq!(back, envelope);
        job.status = JobStatus::Failed;
        let second = job.reopened(at).unwrap();
        let detail = JobEventDetail::from_job(&second);
        assert_eq!(detail.event_id, format!("{}:run2:RECEIVED", job.job_id), "a new run's events are new events");
        assert_eq!(detail.run, 2);
    }
}
