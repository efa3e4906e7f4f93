//! The ingest service: validates and decodes an upload, writes the canonical RAS volume
//! (`jobs/<id>/volume.nii.gz`) and the ingest report (`jobs/<id>/ingest.json`).

pub mod convert;
pub mod dicom;
pub mod synthetic_dicom;

use std::sync::Arc;

use async_trait::async_trait;
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::ids::JobId;
use iris_core::job::{JobRecord, JobStatus, Stage, StatsSummary, UploadSource};
use iris_core::keys::{QueueRole, UPLOADS_PREFIX};
use iris_core::notification::{CreatedObject, Notification, parse_notification};
use iris_core::ports::{PortError, ReceivedMessage, TransitionOutcome};
use iris_core::runtime::{MessageHandler, Outcome, run_worker};
use iris_core::stage::{
    StageContext, StageStart, begin_stage, failure, outcome_of_port_error, outcome_of_task_panic,
    write_outputs_and_finish,
};
use iris_core::time::Timestamp;
use iris_core::{Artifact, ErrorCode};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, instrument};

pub use convert::{
    IngestError, IngestLimits, Upload, VolumeAssembly, encode_outputs, ingest_upload, ingest_upload_to, report_json,
};

pub struct IngestHandler {
    context: StageContext,
    limits: IngestLimits,
    /// Salt of the key digest job records keep (`IRIS_RECORD_SALT`).
    record_salt: String,
}

impl IngestHandler {
    pub fn new(context: StageContext, limits: IngestLimits) -> IngestHandler {
        IngestHandler { context, limits, record_salt: String::new() }
    }

    /// The handler with the deployment's salt for the key digests in job records.
    pub fn with_record_salt(mut self, salt: &str) -> IngestHandler {
        self.record_salt = salt.to_owned();
        self
    }

    pub fn from_config(backends: &Backends, config: &IrisConfig) -> IngestHandler {
        IngestHandler::new(
            StageContext::from_config(backends, config),
            IngestLimits { max_upload_bytes: config.max_upload_bytes, max_voxels: config.max_voxels },
        )
        .with_record_salt(&config.record_salt)
    }

    #[instrument(skip_all, fields(job_id))]
    async fn ingest_object(&self, object: &CreatedObject, receive_count: u32) -> Outcome {
        let Some(job_id) = job_id_of(object) else {
            return Outcome::Skipped { reason: "the object is not under uploads/".into() };
        };
        Span::current().record("job_id", job_id.as_str());
        let user_id = match object.key.upload_user() {
            Ok(user) => user,
            Err(error) => return Outcome::Reject { reason: error.to_string() },
        };
        let ledger = &self.context.ledger;
        let head = match self.context.objects.head(&object.key).await {
            Ok(head) => head,
            Err(error) => return Outcome::Retry { reason: format!("reading the upload's metadata: {error}") },
        };
        let options = head.as_ref().map(|h| h.metadata.clone()).unwrap_or_default();
        let record = JobRecord::received_with_salt(
            &upload_of(object),
            user_id,
            options.clone(),
            Timestamp::now(),
            &self.record_salt,
        );
        match ledger.jobs.create_if_absent(&record).await {
            Ok(true) => {
                info!(status = %JobStatus::Received, "job received");
                if let Err(error) = ledger.publish(&record).await {
                    return Outcome::Retry { reason: format!("publishing RECEIVED: {error}") };
                }
            }
            Ok(false) => {
                if let Err(outcome) = self.reopen_if_uploaded_again(&job_id, object.event_time, &options).await {
                    return outcome;
                }
            }
            Err(error) => return Outcome::Retry { reason: format!("creating the job: {error}") },
        }
        match begin_stage(ledger, &job_id, Stage::Ingest, receive_count, object.event_time).await {
            Ok(StageStart::Proceed(_)) => {}
            Ok(StageStart::Settled(job)) => {
                return Outcome::Skipped { reason: format!("job already {}", job.status) };
            }
            Ok(StageStart::UnknownJob) => return Outcome::Retry { reason: "job vanished after creation".into() },
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Ingest, "starting ingest"),
        }
        let Some(head) = head.filter(|h| object.etag.is_empty() || h.etag == object.etag) else {
            return upload_replaced(job_id);
        };
        let limit = self.limits.max_upload_bytes;
        if head.size > limit {
            return fail(&job_id, &IngestError::UploadTooLarge { size: head.size, limit });
        }
        // Read only the bytes that were checked (If-Match on the ETag), and no more than the cap,
        // whatever the object says about itself.
        let bytes = match self.context.objects.get_matching(&object.key, &head.etag, limit).await {
            Ok(bytes) => bytes,
            Err(PortError::PreconditionFailed(_) | PortError::NotFound(_)) => return upload_replaced(job_id),
            Err(PortError::TooLarge { .. }) => {
                return fail(&job_id, &IngestError::UploadTooLarge { size: head.size.max(limit + 1), limit });
            }
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Ingest, "reading the upload"),
        };
        let file_name = object.key.file_name().to_owned();
        let limits = self.limits;
        let cancellation = iris_core::cancel::current();
        let converted = tokio::task::spawn_blocking(move || {
            let _cancellable = iris_core::cancel::ThreadToken::install(cancellation);
            // An axial series is written plane by plane: only the upload and the compressed
            // volume are ever in memory, never the volume itself.
            let mut volume_nii_gz = Vec::new();
            let (report, assembly) = ingest_upload_to(Upload::Bytes(bytes), &file_name, &limits, &mut volume_nii_gz)?;
            let summary = StatsSummary {
                source_format: Some(report.source_format.clone()),
                dims: Some(report.canonical.dims),
                spacing_mm: Some(report.canonical.spacing_mm),
                ..StatsSummary::default()
            };
            Ok::<_, IngestError>((report_json(&report)?, volume_nii_gz, summary, assembly))
        })
        .await;
        let (report_json, volume_nii_gz, summary) = match converted {
            Ok(Ok((report_json, volume_nii_gz, summary, assembly))) => {
                info!(?assembly, volume_bytes = volume_nii_gz.len(), "canonical volume written");
                (report_json, volume_nii_gz, summary)
            }
            Ok(Err(error)) => return fail(&job_id, &error),
            Err(panic) => return outcome_of_task_panic(&panic, &job_id, Stage::Ingest),
        };
        // The report first, the volume last: the volume's notification starts segmentation.
        let outputs =
            vec![(Artifact::IngestReport.key(&job_id), report_json), (Artifact::Volume.key(&job_id), volume_nii_gz)];
        write_outputs_and_finish(&self.context, &job_id, Stage::Ingest, receive_count, outputs, summary).await
    }
}

impl IngestHandler {
    /// A FAILED job whose upload was written again after the failure (same bytes, so the same job
    /// id) starts its next run, with the new upload's options; the failed run stays in the
    /// record's history. A COMPLETED job, or a repeated delivery of the event that started the
    /// failed run, is left as it is (`Ok`: the caller goes on and finds the stage settled).
    async fn reopen_if_uploaded_again(
        &self,
        job_id: &JobId,
        uploaded_at: Option<Timestamp>,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Outcome> {
        let ledger = &self.context.ledger;
        let job = match ledger.jobs.get(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(()),
            Err(error) => return Err(Outcome::Retry { reason: format!("reading the job: {}", error.summary()) }),
        };
        if !job.is_reopened_by(uploaded_at) {
            return Ok(());
        }
        let Some(mut next) = job.reopened(Timestamp::now()) else { return Ok(()) };
        next.options = options.clone();
        match ledger.jobs.reopen(&next).await {
            Ok(TransitionOutcome::Applied(next)) => {
                let previous = job.error.as_ref().map_or("unknown", |e| e.code.as_str());
                info!(run = next.run, previous_error = previous, "failed job re-opened by a new upload");
                ledger
                    .publish(&next)
                    .await
                    .map_err(|error| Outcome::Retry { reason: format!("publishing RECEIVED: {}", error.summary()) })
            }
            // Another delivery re-opened it first, or it vanished: go on as for any repeat.
            Ok(_) => Ok(()),
            Err(error) => Err(Outcome::Retry { reason: format!("re-opening the job: {}", error.summary()) }),
        }
    }
}

/// The upload changed between its event and the read: this job fails, the newer upload's own
/// event makes its own job.
fn upload_replaced(job_id: JobId) -> Outcome {
    Outcome::Fail {
        job_id,
        stage: Some(Stage::Ingest),
        code: ErrorCode::UploadReplaced,
        message: "the uploaded file was deleted or replaced before it could be read; the newer upload is its own job"
            .into(),
    }
}

fn fail(job_id: &JobId, error: &IngestError) -> Outcome {
    failure(job_id, Stage::Ingest, error.code(), error.to_string())
}

fn upload_of(object: &CreatedObject) -> UploadSource {
    UploadSource {
        bucket: object.bucket.clone(),
        key: object.key.to_string(),
        etag: object.etag.clone(),
        version_id: object.version_id.clone(),
    }
}

fn job_id_of(object: &CreatedObject) -> Option<JobId> {
    object.key.as_str().starts_with(UPLOADS_PREFIX).then(|| upload_of(object).job_id())
}

#[async_trait]
impl MessageHandler for IngestHandler {
    fn name(&self) -> &'static str {
        "ingest"
    }

    async fn process_one(&self, message: &ReceivedMessage) -> Outcome {
        let objects = match parse_notification(&message.body) {
            Ok(Notification::Test) => return Outcome::Skipped { reason: "s3:TestEvent".into() },
            Ok(Notification::Created(objects)) => objects,
            Err(error) => return Outcome::Reject { reason: error.to_string() },
        };
        if objects.is_empty() {
            return Outcome::Skipped { reason: "no object-created records".into() };
        }
        for object in &objects {
            let outcome = self.ingest_object(object, message.receive_count).await;
            if !matches!(outcome, Outcome::Done | Outcome::Skipped { .. }) || objects.len() == 1 {
                return outcome;
            }
        }
        Outcome::Done
    }

    fn job_of(&self, message: &ReceivedMessage) -> Option<(JobId, Option<Stage>)> {
        match parse_notification(&message.body) {
            Ok(Notification::Created(objects)) => {
                objects.first().and_then(job_id_of).map(|job| (job, Some(Stage::Ingest)))
            }
            _ => None,
        }
    }
}

/// Runs the ingest worker until `shutdown`.
pub async fn run_service(backends: &Backends, config: &IrisConfig, shutdown: CancellationToken) {
    let handler = Arc::new(IngestHandler::from_config(backends, config));
    run_worker(handler, backends.queue(QueueRole::Ingest), backends.ledger(), config.worker_settings(), shutdown).await;
}
