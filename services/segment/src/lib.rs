//! The segment service: labels every voxel of the canonical volume, puts the label map back on the
//! upload's exact grid (`jobs/<id>/labels.nii.gz`) and writes per-label statistics (`stats.json`).
//!
//! This version runs the built-in classical CT model; ONNX models arrive with the segment issue.

pub mod classical;
pub mod stats;

use std::sync::Arc;

use async_trait::async_trait;
use iris_shared::backends::Backends;
use iris_shared::config::IrisConfig;
use iris_shared::ingest_report::IngestReport;
use iris_shared::job::{JobId, Stage};
use iris_shared::keys::{self, QueueRole, VOLUME_FILE};
use iris_shared::labels::SegmentationStats;
use iris_shared::nifti_codec::{DecodeLimits, NiftiDecodeError, decode_nifti_hounsfield, encode_nifti_gz};
use iris_shared::runtime::{Outcome, run_worker};
use iris_shared::stage::{
    StageContext, TriggeredStage, TriggeredStageHandler, enter_stage, failure, outcome_of_port_error,
    outcome_of_task_panic, write_outputs_and_finish,
};
use iris_shared::time::Timestamp;
use iris_shared::volume::{Volume, VolumeError};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, instrument};

pub use classical::{ClassicalModelError, classical_label_table, segment_classical};
pub use stats::compute_statistics;

/// A label map on the upload's grid and its statistics, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOutputs {
    pub labels_nii_gz: Vec<u8>,
    pub stats: SegmentationStats,
    pub stats_json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("the canonical volume could not be read: {0}")]
    Volume(#[from] NiftiDecodeError),
    #[error("ingest.json is unreadable: {0}")]
    Report(String),
    #[error("{0}")]
    Model(#[from] ClassicalModelError),
    #[error("the volume's grid is inconsistent: {0}")]
    Grid(#[from] VolumeError),
    #[error("could not write the outputs: {0}")]
    Encode(String),
}

impl SegmentError {
    pub fn code(&self) -> &'static str {
        match self {
            SegmentError::Volume(error) => error.code(),
            SegmentError::Report(_) => "corrupt_file",
            SegmentError::Model(error) => error.code(),
            SegmentError::Grid(_) => "not_a_volume",
            SegmentError::Encode(_) => "internal_error",
        }
    }
}

/// Segments the canonical CT (`volume.nii.gz` bytes) and maps the labels back to the upload's grid
/// described by `report`.
pub fn segment_canonical(
    volume_nii_gz: &[u8],
    report: &IngestReport,
    max_voxels: u64,
) -> Result<SegmentOutputs, SegmentError> {
    let (decoded, _) = decode_nifti_hounsfield(volume_nii_gz, &DecodeLimits { max_voxels })?;
    let ct: Volume<i16> = decoded.volume;
    let canonical_labels = ct.with_voxels(segment_classical(&ct)?)?;
    let table = classical_label_table();
    // Statistics do not depend on voxel order, so the canonical grid gives the upload's figures.
    let mut stats =
        compute_statistics(&canonical_labels, &ct, &table).map_err(|e| SegmentError::Encode(e.to_string()))?;
    stats.dims = report.original.dims;
    let labels = report.reorientation.restore(&canonical_labels, report.original.affine)?;
    let labels_nii_gz =
        encode_nifti_gz(&labels, &report.original.geometry).map_err(|e| SegmentError::Encode(e.to_string()))?;
    let mut stats_json = serde_json::to_vec_pretty(&stats).map_err(|e| SegmentError::Encode(e.to_string()))?;
    stats_json.push(b'\n');
    Ok(SegmentOutputs { labels_nii_gz, stats, stats_json })
}

pub struct SegmentHandler {
    context: StageContext,
    max_voxels: u64,
}

impl SegmentHandler {
    pub fn from_config(backends: &Backends, config: &IrisConfig) -> SegmentHandler {
        SegmentHandler { context: StageContext::from_config(backends, config), max_voxels: config.max_voxels }
    }
}

#[async_trait]
impl TriggeredStage for SegmentHandler {
    fn stage(&self) -> Stage {
        Stage::Segment
    }

    fn trigger_file(&self) -> &'static str {
        VOLUME_FILE
    }

    #[instrument(skip_all, fields(job_id))]
    async fn run_job(&self, job_id: JobId, receive_count: u32, triggered_at: Option<Timestamp>) -> Outcome {
        Span::current().record("job_id", job_id.as_str());
        if let Err(outcome) = enter_stage(&self.context, &job_id, Stage::Segment, receive_count, triggered_at).await {
            return outcome;
        }
        let report = match self.context.objects.get(&keys::ingest_report_key(&job_id)).await {
            Ok(bytes) => match serde_json::from_slice::<IngestReport>(&bytes) {
                Ok(report) => report,
                Err(error) => return fail(&job_id, &SegmentError::Report(error.to_string())),
            },
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Segment, "reading ingest.json"),
        };
        let volume = match self.context.objects.get(&keys::volume_key(&job_id)).await {
            Ok(bytes) => bytes,
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Segment, "reading volume.nii.gz"),
        };
        let max_voxels = self.max_voxels;
        let outputs = match tokio::task::spawn_blocking(move || segment_canonical(&volume, &report, max_voxels)).await {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(error)) => return fail(&job_id, &error),
            Err(panic) => return outcome_of_task_panic(&panic, &job_id, Stage::Segment),
        };
        info!(model = %outputs.stats.model, "segmented");
        // Statistics first, labels last: the label map's notification starts meshing.
        let outputs =
            vec![(keys::stats_key(&job_id), outputs.stats_json), (keys::labels_key(&job_id), outputs.labels_nii_gz)];
        write_outputs_and_finish(&self.context, &job_id, Stage::Segment, receive_count, outputs).await
    }
}

fn fail(job_id: &JobId, error: &SegmentError) -> Outcome {
    failure(job_id, Stage::Segment, error.code(), error.to_string())
}

/// Runs the segment worker until `shutdown`.
pub async fn run_service(backends: &Backends, config: &IrisConfig, shutdown: CancellationToken) {
    let handler = Arc::new(TriggeredStageHandler(SegmentHandler::from_config(backends, config)));
    run_worker(handler, backends.queue(QueueRole::Segment), backends.ledger(), config.worker_settings(), shutdown)
        .await;
}
