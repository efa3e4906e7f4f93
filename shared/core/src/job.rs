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
    /// A salted SHA-256 of the upload's key ([`source_key_digest`]), never the key itself: a key is
    /// a file name, and file names name patients. Whoever holds the key and the deployment's salt
    /// can find its job; the record alone tells nothing.
    pub source_key_digest: String,
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
    /// Which run of the upload this record describes: 1 at first; a new upload of the same bytes
    /// after the job FAILED starts the next run ([`JobRecord::reopened`]).
    #[serde(default = "first_run")]
    pub run: u32,
    /// When the current run began, if it is not the first (the first began at `created_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started_at: Option<Timestamp>,
    /// The runs before this one, each failed, oldest first: their stages and errors are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_runs: Vec<PastRun>,
}

/// A run of a job that failed and was followed by another (a re-upload of the same bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PastRun {
    pub run: u32,
    pub failed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub stages: BTreeMap<Stage, StageRecord>,
}

fn first_run() -> u32 {
    1
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

/// The digest of an upload's key kept in its job record: hex SHA-256 over a domain tag, the
/// deployment's salt (`IRIS_RECORD_SALT`) and the key, each length-prefixed.
pub fn source_key_digest(salt: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in ["iris-source-key-v1", salt, key] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

impl JobRecord {
    /// A new job at RECEIVED for an upload; its id is derived from the upload. The key's digest
    /// is unsalted: [`JobRecord::received_with_salt`] is what ingest uses.
    pub fn received(
        upload: &UploadSource,
        user_id: UserId,
        options: BTreeMap<String, String>,
        at: Timestamp,
    ) -> JobRecord {
        JobRecord::received_with_salt(upload, user_id, options, at, "")
    }

    /// [`JobRecord::received`] with the deployment's salt in the key's digest.
    pub fn received_with_salt(
        upload: &UploadSource,
        user_id: UserId,
        options: BTreeMap<String, String>,
        at: Timestamp,
        salt: &str,
    ) -> JobRecord {
        JobRecord {
            job_id: upload.job_id(),
            user_id,
            bucket: upload.bucket.clone(),
            source_key_digest: source_key_digest(salt, &upload.key),
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
            run: 1,
            run_started_at: None,
            previous_runs: Vec::new(),
        }
    }

    /// Whether an object-created event of the job's upload, written at `uploaded_at`, starts a
    /// new run: only a FAILED job is re-opened, and only by an upload made after it failed (a
    /// repeated delivery of the event that started the failed run is older than the failure).
    /// Without an event time nothing is re-opened.
    pub fn is_reopened_by(&self, uploaded_at: Option<Timestamp>) -> bool {
        self.status == JobStatus::Failed && uploaded_at.is_some_and(|at| at > self.updated_at)
    }

    /// The next run of a FAILED job: back to RECEIVED with the run number one up, the failed
    /// run's stages and error kept in `previous_runs`, artifacts, stages and summary cleared, and
    /// the expiry counted again from `at`. `None` unless the job is FAILED.
    pub fn reopened(&self, at: Timestamp) -> Option<JobRecord> {
        if self.status != JobStatus::Failed {
            return None;
        }
        let mut next = self.clone();
        next.previous_runs.push(PastRun {
            run: self.run,
            failed_at: self.updated_at,
            error: self.error.clone(),
            stages: self.stages.clone(),
        });
        next.run = self.run + 1;
        next.run_started_at = Some(at);
        next.status = JobStatus::Received;
        next.updated_at = at;
        next.expires_at = at.epoch_seconds() + JOB_TIME_TO_LIVE_DAYS * 24 * 3600;
        next.stages.clear();
        next.artifacts.clear();
        next.error = None;
        next.summary = StatsSummary::default();
        Some(next)
    }

    /// Where the job's current state stands in the order subscribers see states in: runs first,
    /// then the status ladder (see [`delivery_position`]).
    pub fn delivery_position(&self) -> u32 {
        delivery_position(self.run, self.status)
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
                // A failure does not make a stage that never started look started.
                if transition.to != JobStatus::Failed {
                    record.started_at.get_or_insert(transition.at);
                }
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

/// The order in which a job's states reach subscribers: every status of run `n` comes after
/// every status of run `n - 1`, and within a run the ladder's order holds.
pub fn delivery_position(run: u32, status: JobStatus) -> u32 {
    run.saturating_sub(1).saturating_mul(16).saturating_add(u32::from(status.rank()))
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
    fn a_failed_job_is_reopened_only_by_a_later_upload_and_keeps_its_history() {
        let failed_at = Timestamp::from_epoch_millis(1_700_000_005_000);
        let ingesting = record().advanced(&Transition::to(
            JobStatus::Ingesting,
            Timestamp::from_epoch_millis(1_700_000_001_000),
            1,
        ));
        let error = JobError { stage: Some(Stage::Ingest), code: ErrorCode::StorageError, message: "m".into() };
        let failed = ingesting.unwrap().advanced(&Transition::failed(error.clone(), failed_at, 4)).unwrap();
        assert!(!failed.is_reopened_by(None), "no event time: no new run");
        assert!(
            !failed.is_reopened_by(Some(Timestamp::from_epoch_millis(1_700_000_000_500))),
            "the first upload's event"
        );
        assert!(!failed.is_reopened_by(Some(failed_at)));
        let uploaded_again = Timestamp::from_epoch_millis(1_700_000_009_000);
        assert!(failed.is_reopened_by(Some(uploaded_again)));
        assert!(!record().is_reopened_by(Some(uploaded_again)), "only a FAILED job is re-opened");

        let reopened = failed.reopened(uploaded_again).unwrap();
        assert_eq!((reopened.status, reopened.run), (JobStatus::Received, 2));
        assert_eq!(reopened.job_id, failed.job_id);
        assert_eq!(reopened.created_at, failed.created_at);
        assert!(reopened.error.is_none() && reopened.stages.is_empty() && reopened.artifacts.is_empty());
        assert_eq!(reopened.previous_runs.len(), 1);
        let past = &reopened.previous_runs[0];
        assert_eq!((past.run, past.failed_at, past.error.as_ref()), (1, failed_at, Some(&error)));
        assert_eq!(past.stages[&Stage::Ingest].attempts, 4);
        assert!(reopened.delivery_position() > failed.delivery_position(), "run 2 comes after run 1's failure");
        assert!(reopened.reopened(uploaded_again).is_none());
        let completed = reopened.advanced(&Transition::to(JobStatus::Completed, uploaded_again, 1)).unwrap();
        assert!(completed.reopened(uploaded_again).is_none(), "a COMPLETED job stays completed");
        let text = serde_json::to_string(&reopened).unwrap();
        assert_eq!(serde_json::from_str::<JobRecord>(&text).unwrap(), reopened);
    }

    #[test]
    fn a_record_written_before_runs_existed_is_run_one() {
        let mut value = serde_json::to_value(record()).unwrap();
        value.as_object_mut().unwrap().remove("run");
        let job: JobRecord = serde_json::from_value(value).unwrap();
        assert_eq!((job.run, job.previous_runs.len()), (1, 0));
    }

    #[test]
    fn the_record_keeps_a_salted_digest_of_the_key_not_the_key() {
        let job = record();
        let text = serde_json::to_string(&job).unwrap();
        assert!(!text.contains("a.nii.gz") && !text.contains("uploads/u/"), "{text}");
        assert_eq!(job.source_key_digest, source_key_digest("", "uploads/u/a.nii.gz"));
        assert_eq!(job.source_key_digest.len(), 64);
        assert_ne!(source_key_digest("salt", "uploads/u/a.nii.gz"), job.source_key_digest, "the salt changes it");
        assert_ne!(source_key_digest("", "uploads/u/b.nii.gz"), job.source_key_digest);
        // Length prefixes: moving a character between salt and key changes the digest.
        assert_ne!(source_key_digest("ab", "c"), source_key_digest("a", "bc"));
    }

    #[test]
    fn record_round_trips_through_json() {
        let job = record();
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"status\":\"RECEIVED\""));
        assert_eq!(serde_json::from_str::<JobRecord>(&text).unwrap(), job);
    }
}
