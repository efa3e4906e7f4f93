//! The mesh service: turns a label map into one closed, smoothed, simplified, named and coloured
//! surface per structure, written under `jobs/<id>/mesh/`: `scene.glb`, `model.obj` + `model.mtl`,
//! `<label>.stl` per label on request, and `manifest.json`.
//!
//! The pipeline ([`mesh_labels`]): one parallel pass finds every boundary corner of the label map
//! ([`surface::CornerGraph`]); each label's closed, manifold surface is extracted within its
//! bounding box, labels in parallel ([`surface`]); all corners are smoothed together with a
//! windowed-sinc filter and kept within their voxel cell ([`smoothing`]); each label is then
//! triangulated, simplified with meshoptimizer and given normals ([`finish`]); the writers turn the
//! meshes into files ([`export`], [`glb`], [`stl`]).

pub mod export;
pub mod finish;
pub mod glb;
pub mod label_mesh;
mod schedule;
pub mod smoothing;
pub mod stl;
pub mod surface;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use iris_core::artifacts::mesh_file_key;
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::ids::JobId;
use iris_core::job::{Stage, StatsSummary};
use iris_core::keys::QueueRole;
use iris_core::labels::{LabelTable, SegmentationStats, fallback_label};
use iris_core::ports::PortError;
use iris_core::runtime::{Outcome, run_worker};
use iris_core::stage::{
    StageContext, TriggeredStage, TriggeredStageHandler, enter_stage, failure, outcome_of_port_error,
    outcome_of_task_panic, write_outputs_and_finish,
};
use iris_core::time::Timestamp;
use iris_core::{Artifact, ErrorCode};
use iris_volume::nifti_codec::{DecodeLimits, NiftiDecodeError, decode_nifti, decode_nifti_uint8};
use iris_volume::volume::Volume;
use rayon::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, instrument};

pub use export::{ManifestFiles, ManifestSettings, MeshManifest, MeshedLabel};
pub use finish::{DEFAULT_SIMPLIFICATION, SimplificationSettings};
pub use glb::GlbGeometry;
pub use label_mesh::LabelMesh;
pub use smoothing::{DEFAULT_SMOOTHING, SmoothingSettings};
pub use surface::{ExtractionSettings, SkippedLabel};

/// The mesh stage's files, by name in `jobs/<id>/mesh/` (as the manifest and the OBJ refer to them).
pub const GLB_FILE: &str = Artifact::MeshGlb.file_name();
pub const OBJ_FILE: &str = Artifact::MeshObj.file_name();
pub const MTL_FILE: &str = Artifact::MeshMtl.file_name();
pub const MANIFEST_FILE: &str = Artifact::MeshManifest.file_name();
/// Labels with fewer voxels than this get no surface (listed as skipped in the manifest).
pub const DEFAULT_MINIMUM_VOXELS: u64 = 10;

/// Everything that decides the meshes and files, from the job's options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshSettings {
    pub minimum_voxels: u64,
    pub smoothing: SmoothingSettings,
    pub simplification: SimplificationSettings,
    pub glb_geometry: GlbGeometry,
    /// Also write one binary STL file per label.
    pub write_stl: bool,
}

/// The default settings: Slicer-like smoothing, 90 % of the triangles removed, float GLB, no STL.
pub const DEFAULT_MESH_SETTINGS: MeshSettings = MeshSettings {
    minimum_voxels: DEFAULT_MINIMUM_VOXELS,
    smoothing: DEFAULT_SMOOTHING,
    simplification: DEFAULT_SIMPLIFICATION,
    glb_geometry: GlbGeometry::Float,
    write_stl: false,
};

/// Every label's finished mesh, and the labels left out.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshScene {
    pub labels: Vec<MeshedLabel>,
    pub skipped: Vec<SkippedLabel>,
    /// Volume of one voxel in millilitres.
    pub voxel_volume_ml: f64,
}

/// The files of the mesh stage, by file name (relative to `jobs/<id>/mesh/`), and the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshArtifacts {
    /// `scene.glb`, `model.obj`, `model.mtl`, then STL files if asked for; `manifest.json` is not
    /// among them (see [`MeshArtifacts::manifest_json`]).
    pub files: Vec<(String, Vec<u8>)>,
    pub manifest: MeshManifest,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the label map could not be read: {0}")]
    LabelMap(#[from] NiftiDecodeError),
    #[error("the label map holds value {0}, which is not a label id (whole numbers 0-255)")]
    NotALabelMap(f32),
    #[error("stats.json is unreadable: {0}")]
    Stats(String),
    #[error("{0}")]
    TooLarge(#[from] surface::TooManyCorners),
    #[error("option {name}={value:?} is invalid: {expected}")]
    InvalidOption { name: &'static str, value: String, expected: &'static str },
    #[error("the GLB could not be written: {0}")]
    Glb(#[from] glb::GlbError),
}

impl MeshError {
    pub fn code(&self) -> ErrorCode {
        match self {
            MeshError::LabelMap(error) => error.code(),
            MeshError::NotALabelMap(_) => ErrorCode::NotALabelMap,
            MeshError::Stats(_) => ErrorCode::CorruptFile,
            MeshError::TooLarge(_) => ErrorCode::VolumeTooLarge,
            MeshError::InvalidOption { .. } => ErrorCode::InvalidOption,
            MeshError::Glb(_) => ErrorCode::MeshExportFailed,
        }
    }
}

impl MeshSettings {
    /// Reads mesh's options from a job's options (the upload's metadata); other keys are ignored.
    ///
    /// | option | values | default |
    /// |---|---|---|
    /// | `reduction-percent` | 0–99, share of triangles removed | 90 |
    /// | `smoothing` | 0–1, 3D Slicer's smoothing factor | 0.5 |
    /// | `glb-geometry` | `float`, `quantized`, `meshopt` | `float` |
    /// | `stl` | `true`/`false`: one binary STL per label | `false` |
    pub fn from_job_options(options: &BTreeMap<String, String>) -> Result<MeshSettings, MeshError> {
        let mut settings = DEFAULT_MESH_SETTINGS;
        let option = |name: &str| options.get(name).map(|value| value.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(value) = option("reduction-percent") {
            settings.simplification.reduction_percent =
                value.parse::<u8>().ok().filter(|&percent| percent <= 99).ok_or(MeshError::InvalidOption {
                    name: "reduction-percent",
                    value,
                    expected: "a whole number from 0 to 99",
                })?;
        }
        if let Some(value) = option("smoothing") {
            settings.smoothing.factor = value
                .parse::<f64>()
                .ok()
                .filter(|factor| (0.0..=1.0).contains(factor))
                .ok_or(MeshError::InvalidOption { name: "smoothing", value, expected: "a number from 0 to 1" })?;
        }
        if let Some(value) = option("glb-geometry") {
            settings.glb_geometry = GlbGeometry::parse(&value.to_ascii_lowercase()).map_err(|_| {
                MeshError::InvalidOption { name: "glb-geometry", value, expected: "float, quantized or meshopt" }
            })?;
        }
        if let Some(value) = option("stl") {
            settings.write_stl = match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => return Err(MeshError::InvalidOption { name: "stl", value, expected: "true or false" }),
            };
        }
        Ok(settings)
    }
}

/// Meshes a label map (`.nii`/`.nii.gz` bytes) into every file of the mesh stage.
pub fn mesh_label_map(
    labels_nifti: &[u8],
    table: &LabelTable,
    settings: &MeshSettings,
    max_voxels: u64,
) -> Result<MeshArtifacts, MeshError> {
    let limits = DecodeLimits { max_voxels };
    // uint8 label maps (what segment writes) are read as they are stored; others are checked.
    let labels = match decode_nifti_uint8(labels_nifti, &limits)? {
        Some(decoded) => decoded.volume,
        None => label_volume(&decode_nifti(labels_nifti, &limits)?.volume)?,
    };
    let scene = mesh_labels(&labels, table, settings)?;
    export_scene(&scene, table, settings)
}

/// Every label's finished mesh (see the crate documentation for the steps).
pub fn mesh_labels(labels: &Volume<u8>, table: &LabelTable, settings: &MeshSettings) -> Result<MeshScene, MeshError> {
    let started = std::time::Instant::now();
    let extraction =
        surface::extract_topologies(labels, &ExtractionSettings { minimum_voxels: settings.minimum_voxels })?;
    let extracted = started.elapsed();
    let corners = smoothing::smooth_corners(&extraction.graph, &settings.smoothing);
    let smoothed = started.elapsed();
    let descriptions: Vec<_> = extraction
        .topologies
        .iter()
        .map(|topology| table.find(topology.label).cloned().unwrap_or_else(|| fallback_label(topology.label)))
        .collect();
    let names: Vec<(u16, &str)> = descriptions.iter().map(|d| (d.id, d.name.as_str())).collect();
    let file_names = export::safe_unique_names(&names);
    let finished = schedule::largest_first(
        extraction.topologies.len(),
        |index| extraction.topologies[index].quads.len(),
        |index| {
            let (topology, description) = (&extraction.topologies[index], &descriptions[index]);
            let label_started = std::time::Instant::now();
            let (mesh, figures) = finish::finish_label(
                topology,
                &corners,
                labels.affine(),
                description.name.clone(),
                description.color,
                &settings.simplification,
            );
            tracing::debug!(
                label = topology.label,
                triangles = figures.extracted_triangles,
                retries = figures.simplification_retries,
                finish_ms = label_started.elapsed().as_millis() as u64,
                "label finished"
            );
            if figures.simplification_retries > 0 {
                info!(
                    label = topology.label,
                    retries = figures.simplification_retries,
                    "simplification refused and redone (locked around folds, or gentler)"
                );
            }
            MeshedLabel {
                mesh,
                voxels: topology.voxels,
                extracted_triangles: figures.extracted_triangles,
                file_name: file_names[index].clone(),
            }
        },
    );
    info!(
        labels = finished.len(),
        skipped = extraction.skipped.len(),
        corners = extraction.graph.node_count(),
        extract_ms = extracted.as_millis() as u64,
        smooth_ms = (smoothed - extracted).as_millis() as u64,
        finish_ms = (started.elapsed() - smoothed).as_millis() as u64,
        "meshed label map"
    );
    Ok(MeshScene { labels: finished, skipped: extraction.skipped, voxel_volume_ml: labels.voxel_volume_ml() })
}

/// Writes a scene's files: GLB, OBJ + MTL, STL per label if asked for, and the manifest.
pub fn export_scene(
    scene: &MeshScene,
    table: &LabelTable,
    settings: &MeshSettings,
) -> Result<MeshArtifacts, MeshError> {
    let generator = concat!("IRIS Oculus ", env!("CARGO_PKG_VERSION"));
    let (glb, (obj, mtl)) = rayon::join(
        || glb::write_glb(scene.labels.iter().map(|label| &label.mesh), settings.glb_geometry, generator),
        || export::write_obj_and_mtl(&scene.labels, table, MTL_FILE),
    );
    let mut files = vec![(GLB_FILE.to_owned(), glb?), (OBJ_FILE.to_owned(), obj), (MTL_FILE.to_owned(), mtl)];
    let stl_name = |label: &MeshedLabel| settings.write_stl.then(|| format!("{}.stl", label.file_name));
    if settings.write_stl {
        let stls: Vec<(String, Vec<u8>)> = scene
            .labels
            .par_iter()
            .filter_map(|label| Some((stl_name(label)?, stl::write_binary_stl(&label.mesh))))
            .collect();
        files.extend(stls);
    }
    let manifest = export::build_manifest(
        &scene.labels,
        &scene.skipped,
        table,
        ManifestSettings {
            reduction_percent: settings.simplification.reduction_percent,
            smoothing: settings.smoothing.factor,
            minimum_voxels: settings.minimum_voxels,
            glb_geometry: settings.glb_geometry.as_str().to_owned(),
        },
        ManifestFiles { glb: GLB_FILE.to_owned(), obj: OBJ_FILE.to_owned(), mtl: MTL_FILE.to_owned() },
        scene.voxel_volume_ml,
        stl_name,
    );
    Ok(MeshArtifacts { files, manifest })
}

impl MeshArtifacts {
    /// `manifest.json`'s bytes (pretty JSON with a final newline).
    pub fn manifest_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut json = serde_json::to_vec_pretty(&self.manifest)?;
        json.push(b'\n');
        Ok(json)
    }
}

/// The label map's values as label ids; anything else is not a label map.
pub fn label_volume(values: &Volume<f32>) -> Result<Volume<u8>, MeshError> {
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

    fn trigger(&self) -> Artifact {
        Artifact::Labels
    }

    #[instrument(skip_all, fields(job_id))]
    async fn run_job(&self, job_id: JobId, receive_count: u32, triggered_at: Option<Timestamp>) -> Outcome {
        Span::current().record("job_id", job_id.as_str());
        let job = match enter_stage(&self.context, &job_id, Stage::Mesh, receive_count, triggered_at).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        let settings = match MeshSettings::from_job_options(&job.options) {
            Ok(settings) => settings,
            Err(error) => return fail(&job_id, &error),
        };
        let labels = match self.context.objects.get(&Artifact::Labels.key(&job_id)).await {
            Ok(bytes) => bytes,
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Mesh, "reading labels.nii.gz"),
        };
        let table = match self.context.objects.get(&Artifact::Stats.key(&job_id)).await {
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
        let artifacts =
            match tokio::task::spawn_blocking(move || mesh_label_map(&labels, &table, &settings, max_voxels)).await {
                Ok(Ok(artifacts)) => artifacts,
                Ok(Err(error)) => return fail(&job_id, &error),
                Err(panic) => return outcome_of_task_panic(&panic, &job_id, Stage::Mesh),
            };
        let manifest = match artifacts.manifest_json() {
            Ok(json) => json,
            Err(error) => return Outcome::Retry { reason: format!("encoding manifest: {error}") },
        };
        let summary = StatsSummary {
            meshes: Some(artifacts.manifest.labels.len() as u32),
            triangles: Some(artifacts.manifest.labels.iter().map(|label| label.triangles as u64).sum()),
            ..StatsSummary::default()
        };
        // The manifest goes last: once it exists, every file it names does.
        let mut outputs: Vec<_> =
            artifacts.files.into_iter().map(|(name, bytes)| (mesh_file_key(&job_id, &name), bytes)).collect();
        outputs.push((Artifact::MeshManifest.key(&job_id), manifest));
        write_outputs_and_finish(&self.context, &job_id, Stage::Mesh, receive_count, outputs, summary).await
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
