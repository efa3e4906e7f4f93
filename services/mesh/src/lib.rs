//! The mesh service: turns a label map into one closed, named, coloured surface per structure,
//! written as `jobs/<id>/mesh/model.obj`, `model.mtl` and `manifest.json`.

pub mod export;
pub mod surface;

use std::sync::Arc;

use async_trait::async_trait;
use iris_shared::backends::Backends;
use iris_shared::config::IrisConfig;
use iris_shared::job::{JobId, Stage};
use iris_shared::keys::{self, LABELS_FILE, QueueRole};
use iris_shared::labels::{LabelTable, SegmentationStats};
use iris_shared::nifti_codec::{DecodeLimits, NiftiDecodeError, decode_nifti};
use iris_shared::ports::PortError;
use iris_shared::runtime::{Outcome, run_worker};
use iris_shared::stage::{
    StageContext, TriggeredStage, TriggeredStageHandler, enter_stage, failure, outcome_of_port_error,
    outcome_of_task_panic, write_outputs_and_finish,
};
use iris_shared::time::Timestamp;
use iris_shared::volume::Volume;
use tokio_util::sync::CancellationToken;
use tracing::{Span, instrument};

pub use export::{MeshArtifacts, MeshManifest, export_obj};
pub use surface::{Extraction, ExtractionSettings, extract_surfaces};

pub const OBJ_FILE: &str = "model.obj";
pub const MTL_FILE: &str = "model.mtl";
/// Labels with fewer voxels than this get no surface (listed as skipped in the manifest).
pub const DEFAULT_MINIMUM_VOXELS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the label map could not be read: {0}")]
    LabelMap(#[from] NiftiDecodeError),
    #[error("the label map holds value {0}, which is not a label id (whole numbers 0-255)")]
    NotALabelMap(f32),
    #[error("stats.json is unreadable: {0}")]
    Stats(String),
}

impl MeshError {
    pub fn code(&self) -> &'static str {
        match self {
            MeshError::LabelMap(error) => error.code(),
            MeshError::NotALabelMap(_) => "not_a_label_map",
            MeshError::Stats(_) => "corrupt_file",
        }
    }
}

/// Meshes a label map (`.nii`/`.nii.gz` bytes), naming and colouring surfaces from `table`.
pub fn mesh_label_map(labels_nifti: &[u8], table: &LabelTable, max_voxels: u64) -> Result<MeshArtifacts, MeshError> {
    let decoded = decode_nifti(labels_nifti, &DecodeLimits { max_voxels })?;
    let labels = label_volume(&decoded.volume)?;
    let extraction = extract_surfaces(&labels, &ExtractionSettings { minimum_voxels: DEFAULT_MINIMUM_VOXELS });
    Ok(export_obj(&extraction, table, OBJ_FILE, MTL_FILE))
}

fn label_volume(values: &Volume<f32>) -> Result<Volume<u8>, MeshError> {
    let mut labels = Vec::with_capacity(values.voxel_count());
    for value in values.voxels() {
        if !(0.0..=255.0).contains(value) || value.fract() != 0.0 {
            return Err(MeshError::NotALabelMap(*value));
        }
        labels.push(*value as u8);
    }
    values.with_voxels(labels).map_err(|e| MeshError::Stats(e.to_string()))
}

/// The label table from `stats.json` bytes.
pub fn label_table_from_stats(stats_json: &[u8]) -> Result<LabelTable, MeshError> {
    let stats: SegmentationStats = serde_json::from_slice(stats_json).map_err(|e| MeshError::Stats(e.to_string()))?;
    Ok(stats.label_table())
}

pub struct MeshHandler {
    context: StageContext,
    max_voxels: u64,
}

impl MeshHandler {
    pub fn from_config(backends: &Backends, config: &IrisConfig) -> MeshHandler {
        MeshHandler { context: StageContext::from_config(backends, config), max_voxels: config.max_voxels }
    }
}

#[async_trait]
impl TriggeredStage for MeshHandler {
    fn stage(&self) -> Stage {
        Stage::Mesh
    }

    fn trigger_file(&self) -> &'static str {
        LABELS_FILE
    }

    #[instrument(skip_all, fields(job_id))]
    async fn run_job(&self, job_id: JobId, receive_count: u32, triggered_at: Option<Timestamp>) -> Outcome {
        Span::current().record("job_id", job_id.as_str());
        if let Err(outcome) = enter_stage(&self.context, &job_id, Stage::Mesh, receive_count, triggered_at).await {
            return outcome;
        }
        let labels = match self.context.objects.get(&keys::labels_key(&job_id)).await {
            Ok(bytes) => bytes,
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Mesh, "reading labels.nii.gz"),
        };
        let table = match self.context.objects.get(&keys::stats_key(&job_id)).await {
            Ok(bytes) => match label_table_from_stats(&bytes) {
                Ok(table) => table,
                Err(error) => return fail(&job_id, &error),
            },
            Err(PortError::NotFound(_)) => {
                LabelTable { model: "unknown".into(), diagnostic: false, labels: Vec::new() }
            }
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Mesh, "reading stats.json"),
        };
        let max_voxels = self.max_voxels;
        let artifacts = match tokio::task::spawn_blocking(move || mesh_label_map(&labels, &table, max_voxels)).await {
            Ok(Ok(artifacts)) => artifacts,
            Ok(Err(error)) => return fail(&job_id, &error),
            Err(panic) => return outcome_of_task_panic(&panic, &job_id, Stage::Mesh),
        };
        let manifest = match serde_json::to_vec_pretty(&artifacts.manifest) {
            Ok(mut json) => {
                json.push(b'\n');
                json
            }
            Err(error) => return Outcome::Retry { reason: format!("encoding manifest: {error}") },
        };
        let outputs = vec![
            (keys::mesh_mtl_key(&job_id), artifacts.mtl),
            (keys::mesh_obj_key(&job_id), artifacts.obj),
            (keys::mesh_manifest_key(&job_id), manifest),
        ];
        write_outputs_and_finish(&self.context, &job_id, Stage::Mesh, receive_count, outputs).await
    }
}

fn fail(job_id: &JobId, error: &MeshError) -> Outcome {
    failure(job_id, Stage::Mesh, error.code(), error.to_string())
}

/// Runs the mesh worker until `shutdown`.
pub async fn run_service(backends: &Backends, config: &IrisConfig, shutdown: CancellationToken) {
    let handler = Arc::new(TriggeredStageHandler(MeshHandler::from_config(backends, config)));
    run_worker(handler, backends.queue(QueueRole::Mesh), backends.ledger(), config.worker_settings(), shutdown).await;
}
