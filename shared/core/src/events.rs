//! Pipeline events (source `iris.pipeline`) and their EventBridge envelope.
//!
//! Every event has a stable id, `<jobId>:<STATUS>`, so a subscriber drops duplicates by id:
//! a stage that re-emits after a redelivery sends the same id again.

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
    /// Stable id: `<jobId>:<STATUS>`.
    pub event_id: String,
    pub job_id: JobId,
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

pub fn stable_event_id(job_id: &JobId, status: JobStatus) -> String {
    format!("{job_id}:{status}")
}

impl JobEventDetail {
    /// The event announcing that `job` reached its current status.
    pub fn from_job(job: &JobRecord) -> JobEventDetail {
        JobEventDetail {
            version: EVENT_DETAIL_VERSION,
            event_id: stable_event_id(&job.job_id, job.status),
            job_id: job.job_id.clone(),
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

    /// A progress event of `job` (in its current status), id `<jobId>:<STATUS>:progress:<step>:<done>`.
    pub fn progress_of(job: &JobRecord, progress: StageProgress, at: Timestamp) -> JobEventDetail {
        let mut detail = JobEventDetail::from_job(job);
        detail.event_id = format!("{}:progress:{}:{}", detail.event_id, progress.step, progress.done);
        detail.progress = Some(progress);
        detail.occurred_at = at;
        detail
    }

    pub fn detail_type(&self) -> DetailType {
        if self.progress.is_some() { DetailType::JobProgress } else { DetailType::for_status(self.status) }
    }
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
    }
}
