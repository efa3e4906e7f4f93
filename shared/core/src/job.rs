//! Jobs: the forward-only status ladder, the stages, the job record and its transitions.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;
use crate::error_code::ErrorCode;
use crate::ids::{JobId, UserId};
use crate::time::Timestamp;

/// The status ladder. A job only moves up it; COMPLETED and FAILED are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Received,
    Ingesting,
    Ingested,
    Segmenting,
    Segmented,
    Meshing,
    Completed,
    Failed,
}

/// The pipeline stages that work on a job (notify only reports on jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Ingest,
    Segment,
    Mesh,
}

/// The job item: everything known about one upload's trip through the pipeline.
/// Holds no patient identifiers: ingest keeps only technical metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub job_id: JobId,
    pub user_id: UserId,
    pub bucket: String,
    pub source_key: String,
    pub source_etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version_id: Option<String>,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Epoch seconds after which the item may be deleted (DynamoDB TTL): 90 days after creation.
    pub expires_at: i64,
    /// Per-job options from the upload's object metadata.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub stages: BTreeMap<Stage, StageRecord>,
    /// Artifact → object key.
    #[serde(default)]
    pub artifacts: BTreeMap<Artifact, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// What the stages found, merged as they finish (JobCompleted's `summary`).
    #[serde(default, skip_serializing_if = "StatsSummary::is_empty")]
    pub summary: StatsSummary,
}

/// Figures the stages report about a job, for integrations (JobCompleted's `summary`). Technical
/// facts only, never patient data. A field is absent when its stage has not finished (or, after a
/// crash, when the next stage had to record the finish for it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSummary {
    /// Ingest: the source format (`nifti`, `dicom`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
    /// Ingest: dimensions of the canonical (RAS) volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<[usize; 3]>,
    /// Ingest: voxel spacing in millimetres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<[f64; 3]>,
    /// Segment: the model (or task) that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Segment: structures present in the label map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structures: Option<u32>,
    /// Mesh: structures meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshes: Option<u32>,
    /// Mesh: triangles of all meshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triangles: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    /// When the object that triggered the stage was written (from its object-created event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// How many deliveries of the stage's message it took (1 unless a worker crashed or retried).
    pub attempts: u32,
}

/// Why a job failed: a stable machine-readable code and a message a radiographer understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    pub code: ErrorCode,
    pub message: String,
}

/// The uploaded object a job is made from. Its identity (bucket, key, and version id or else
/// ETag) is the job's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSource {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    /// S3 version id when the bucket is versioned ("null" and empty count as none).
    pub version_id: Option<String>,
}

/// A request to move a job to `to`. It takes effect only if it moves the job forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: JobStatus,
    pub at: Timestamp,
    /// Deliveries of the stage's message so far (recorded on the stage).
    pub attempts: u32,
    pub artifacts: BTreeMap<Artifact, String>,
    pub error: Option<JobError>,
    /// For a stage's start: when its trigger object was written.
    pub triggered_at: Option<Timestamp>,
    /// For a stage's finish: what it found (merged into the record's summary).
    pub summary: StatsSummary,
}

/// Days after creation at which a job item expires.
pub const JOB_TIME_TO_LIVE_DAYS: i64 = 90;

impl UploadSource {
    pub fn job_id(&self) -> JobId {
        let version = self.version_id.as_deref().filter(|v| !v.is_empty() && *v != "null").unwrap_or(&self.etag);
        JobId::derive(&self.bucket, &self.key, version)
    }
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Received,
        JobStatus::Ingesting,
        JobStatus::Ingested,
        JobStatus::Segmenting,
        JobStatus::Segmented,
        JobStatus::Meshing,
        JobStatus::Completed,
        JobStatus::Failed,
    ];

    /// Position on the ladder; conditional writes compare these numbers.
    pub fn rank(self) -> u8 {
        match self {
            JobStatus::Received => 1,
            JobStatus::Ingesting => 2,
            JobStatus::Ingested => 3,
            JobStatus::Segmenting => 4,
            JobStatus::Segmented => 5,
            JobStatus::Meshing => 6,
            JobStatus::Completed => 7,
            JobStatus::Failed => 8,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }

    /// The rule every job store enforces: a job moves only forward, and never out of a terminal status.
    pub fn can_advance_to(self, next: JobStatus) -> bool {
        !self.is_terminal() && next.rank() > self.rank()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Received => "RECEIVED",
            JobStatus::Ingesting => "INGESTING",
            JobStatus::Ingested => "INGESTED",
            JobStatus::Segmenting => "SEGMENTING",
            JobStatus::Segmented => "SEGMENTED",
            JobStatus::Meshing => "MESHING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The stage whose start or end this status marks.
    pub fn stage(self) -> Option<Stage> {
        match self {
            JobStatus::Ingesting | JobStatus::Ingested => Some(Stage::Ingest),
            JobStatus::Segmenting | JobStatus::Segmented => Some(Stage::Segment),
            JobStatus::Meshing | JobStatus::Completed => Some(Stage::Mesh),
            JobStatus::Received | JobStatus::Failed => None,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Ingest, Stage::Segment, Stage::Mesh];

    pub fn started_status(self) -> JobStatus {
        match self {
            Stage::Ingest => JobStatus::Ingesting,
            Stage::Segment => JobStatus::Segmenting,
            Stage::Mesh => JobStatus::Meshing,
        }
    }

    pub fn finished_status(self) -> JobStatus {
        match self {
            Stage::Ingest => JobStatus::Ingested,
            Stage::Segment => JobStatus::Segmented,
            Stage::Mesh => JobStatus::Completed,
        }
    }

    pub fn previous(self) -> Option<Stage> {
        match self {
            Stage::Ingest => None,
            Stage::Segment => Some(Stage::Ingest),
            Stage::Mesh => Some(Stage::Segment),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Segment => "segment",
            Stage::Mesh => "mesh",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobRecord {
    /// A new job at RECEIVED for an upload; its id is derived from the upload.
    pub fn received(
        upload: &UploadSource,
        user_id: UserId,
        options: BTreeMap<String, String>,
        at: Timestamp,
    ) -> JobRecord {
        JobRecord {
            job_id: upload.job_id(),
            user_id,
            bucket: upload.bucket.clone(),
            source_key: upload.key.clone(),
            source_etag: upload.etag.clone(),
            source_version_id: upload.version_id.clone(),
            status: JobStatus::Received,
            created_at: at,
            updated_at: at,
            expires_at: at.epoch_seconds() + JOB_TIME_TO_LIVE_DAYS * 24 * 3600,
            options,
            stages: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            error: None,
            summary: StatsSummary::default(),
        }
    }

    /// The record after `transition`, or `None` when the transition would not move the job forward.
    pub fn advanced(&self, transition: &Transition) -> Option<JobRecord> {
        if !self.status.can_advance_to(transition.to) {
            return None;
        }
        let mut next = self.clone();
        next.status = transition.to;
        next.updated_at = transition.at;
        next.artifacts.extend(transition.artifacts.iter().map(|(k, v)| (*k, v.clone())));
        next.summary.merge(&transition.summary);
        let stage = transition.to.stage().or(transition.error.as_ref().and_then(|e| e.stage));
        if let Some(stage) = stage {
            let record = next.stages.entry(stage).or_default();
            record.attempts = record.attempts.max(transition.attempts);
            if transition.to == stage.started_status() {
                record.started_at.get_or_insert(transition.at);
                if let Some(triggered) = transition.triggered_at {
                    record.triggered_at.get_or_insert(triggered);
                }
            } else {
                record.started_at.get_or_insert(transition.at);
                record.ended_at = Some(transition.at);
            }
        }
        if transition.to == JobStatus::Failed {
            next.error = transition.error.clone();
        }
        Some(next)
    }

    /// Milliseconds each finished stage took.
    pub fn stage_durations_ms(&self) -> BTreeMap<Stage, i64> {
        self.stages
            .iter()
            .filter_map(|(stage, record)| match (record.started_at, record.ended_at) {
                (Some(start), Some(end)) => Some((*stage, end.epoch_millis() - start.epoch_millis())),
                _ => None,
            })
            .collect()
    }
}

impl Transition {
    pub fn to(status: JobStatus, at: Timestamp, attempts: u32) -> Transition {
        Transition {
            to: status,
            at,
            attempts,
            artifacts: BTreeMap::new(),
            error: None,
            triggered_at: None,
            summary: StatsSummary::default(),
        }
    }

    pub fn with_summary(mut self, summary: StatsSummary) -> Transition {
        self.summary = summary;
        self
    }

    pub fn with_artifacts(mut self, artifacts: BTreeMap<Artifact, String>) -> Transition {
        self.artifacts = artifacts;
        self
    }

    pub fn triggered_at(mut self, triggered_at: Option<Timestamp>) -> Transition {
        self.triggered_at = triggered_at;
        self
    }

    pub fn failed(error: JobError, at: Timestamp, attempts: u32) -> Transition {
        Transition {
            to: JobStatus::Failed,
            at,
            attempts,
            artifacts: BTreeMap::new(),
            error: Some(error),
            triggered_at: None,
            summary: StatsSummary::default(),
        }
    }
}

impl StatsSummary {
    pub fn is_empty(&self) -> bool {
        *self == StatsSummary::default()
    }

    /// Takes every field `other` has.
    pub fn merge(&mut self, other: &StatsSummary) {
        let StatsSummary { source_format, dims, spacing_mm, model, structures, meshes, triangles } = other.clone();
        self.source_format = source_format.or(self.source_format.take());
        self.dims = dims.or(self.dims);
        self.spacing_mm = spacing_mm.or(self.spacing_mm);
        self.model = model.or(self.model.take());
        self.structures = structures.or(self.structures);
        self.meshes = meshes.or(self.meshes);
        self.triangles = triangles.or(self.triangles);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        let at = Timestamp::from_epoch_millis(1_700_000_000_000);
        let upload = UploadSource {
            bucket: "b".into(),
            key: "uploads/u/a.nii.gz".into(),
            etag: "etag".into(),
            version_id: None,
        };
        JobRecord::received(&upload, UserId::parse("u").unwrap(), BTreeMap::new(), at)
    }

    #[test]
    fn an_upload_is_identified_by_its_version_or_else_its_etag() {
        let a = JobId::derive("bucket", "uploads/u/x", "e1");
        let mut upload =
            UploadSource { bucket: "bucket".into(), key: "uploads/u/x".into(), etag: "e1".into(), version_id: None };
        assert_eq!(upload.job_id(), a, "without a version id, the ETag identifies the upload");
        upload.version_id = Some("null".into());
        assert_eq!(upload.job_id(), a, "an unversioned bucket's \"null\" version is no version");
        upload.version_id = Some("v2".into());
        assert_eq!(upload.job_id(), JobId::derive("bucket", "uploads/u/x", "v2"));
    }

    #[test]
    fn status_only_moves_forward_and_never_leaves_terminal() {
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let expected = !from.is_terminal() && to.rank() > from.rank();
                assert_eq!(from.can_advance_to(to), expected, "{from} -> {to}");
            }
        }
        assert!(JobStatus::Meshing.can_advance_to(JobStatus::Failed));
        assert!(!JobStatus::Completed.can_advance_to(JobStatus::Failed));
    }

    #[test]
    fn advancing_records_stage_times_attempts_and_artifacts() {
        let start = Timestamp::from_epoch_millis(1_700_000_001_000);
        let end = Timestamp::from_epoch_millis(1_700_000_003_500);
        let job = record();
        let ingesting = job.advanced(&Transition::to(JobStatus::Ingesting, start, 1)).unwrap();
        let artifacts = BTreeMap::from([(Artifact::Volume, "jobs/x/volume.nii.gz".to_owned())]);
        let ingested =
            ingesting.advanced(&Transition::to(JobStatus::Ingested, end, 2).with_artifacts(artifacts)).unwrap();
        assert_eq!(ingested.status, JobStatus::Ingested);
        assert_eq!(ingested.stages[&Stage::Ingest].attempts, 2);
        assert_eq!(ingested.stage_durations_ms()[&Stage::Ingest], 2500);
        assert_eq!(ingested.artifacts[&Artifact::Volume], "jobs/x/volume.nii.gz");
        assert!(ingested.advanced(&Transition::to(JobStatus::Ingesting, end, 1)).is_none());
        let error = JobError { stage: Some(Stage::Segment), code: ErrorCode::CorruptFile, message: "m".into() };
        let failed = ingested.advanced(&Transition::failed(error.clone(), end, 1)).unwrap();
        assert_eq!(failed.error, Some(error));
        assert!(failed.advanced(&Transition::to(JobStatus::Completed, end, 1)).is_none());
    }

    #[test]
    fn record_round_trips_through_json() {
        let job = record();
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"status\":\"RECEIVED\""));
        assert_eq!(serde_json::from_str::<JobRecord>(&text).unwrap(), job);
    }
}
