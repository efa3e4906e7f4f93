//! The segment service: labels every voxel of the canonical volume, puts the label map back on the
//! upload's exact grid (`jobs/<id>/labels.nii.gz`) and writes per-label statistics (`stats.json`).
//!
//! It runs an ONNX model or task from the object store with nnU-Net's sliding window
//! (`docs/segmentation.md`), or the built-in classical CT model when no model is configured or
//! ONNX Runtime is missing (one log line says why).

pub mod card;
pub mod classical;
pub mod model_store;
pub mod network;
pub mod sliding_window;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use iris_core::backends::Backends;
use iris_core::config::{IrisConfig, SegmentSettings};
use iris_core::ids::JobId;
use iris_core::job::{Stage, StatsSummary};
use iris_core::keys::QueueRole;
use iris_core::labels::{LabelTable, SegmentationStats};
use iris_core::runtime::{Outcome, run_worker};
use iris_core::stage::{
    StageContext, TriggeredStage, TriggeredStageHandler, enter_stage, failure, outcome_of_port_error,
    outcome_of_task_panic, write_outputs_and_finish,
};
use iris_core::time::Timestamp;
use iris_core::{Artifact, ErrorCode};
use iris_volume::ingest_report::IngestReport;
use iris_volume::nifti_codec::{DecodeLimits, NiftiDecodeError, decode_nifti_hounsfield, encode_nifti_gz};
use iris_volume::volume::{Volume, VolumeError};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, instrument};

pub use card::{CardError, ModelCard, TaskDefinition, TaskModel};
pub use classical::{ClassicalModelError, classical_label_table, segment_classical};
pub use model_store::{LocalModel, ModelStore, ModelStoreError, ResolvedModel, StoredModel};
pub use network::{Network, NetworkRuntime, NoNetworkRuntime, RuntimeError};
pub use sliding_window::{
    InferenceEngine, InferenceError, ModelGridLogits, WindowOutput, WindowReport, WindowSettings, run_sliding_window,
    run_sliding_window_logits,
};
pub use stats::compute_statistics;

/// The model name that always means the built-in classical model.
pub const CLASSICAL_MODEL_OPTION: &str = "classical";

/// A label map on the upload's grid and its statistics, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOutputs {
    pub labels_nii_gz: Vec<u8>,
    pub stats: SegmentationStats,
    pub stats_json: Vec<u8>,
}

/// The per-job options segment reads from the upload's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentOptions {
    /// `model`: a task or model name, or `classical`.
    pub model: Option<String>,
    /// `fast=true`: the task's `fast_models`.
    pub fast: bool,
    /// `roi-subset=a,b`: only these labels (task label names).
    pub roi_subset: Vec<String>,
}

/// A task ready to run: each model with its verified file and its local → task id map.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    pub task: TaskDefinition,
    pub models: Vec<(LocalModel, BTreeMap<u8, u8>)>,
    /// Task ids kept (roi-subset); `None` keeps every label.
    pub keep: Option<BTreeSet<u8>>,
}

/// Merged task labels on the canonical grid and each model's report, by model name.
pub type PlanOutput = (Vec<u8>, Vec<(String, WindowReport)>);

/// What runs for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmenter {
    /// The built-in model; `reason` says why no ONNX model runs when one was the default.
    Classical {
        reason: Option<String>,
    },
    Onnx(TaskPlan),
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
    #[error("option {name}={value:?} is invalid: {reason}")]
    InvalidOption { name: &'static str, value: String, reason: String },
    #[error("{0}")]
    Store(#[from] ModelStoreError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("model '{model}': {source}")]
    Inference { model: String, source: InferenceError },
    #[error("model '{model}' does not match its card: {reason}")]
    CardMismatch { model: String, reason: String },
}

impl SegmentError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SegmentError::Volume(error) => error.code(),
            SegmentError::Report(_) => ErrorCode::CorruptFile,
            SegmentError::Model(error) => error.code(),
            SegmentError::Grid(_) => ErrorCode::NotAVolume,
            SegmentError::Encode(_) => ErrorCode::InternalError,
            SegmentError::InvalidOption { .. } => ErrorCode::InvalidOption,
            SegmentError::Store(error) => error.code(),
            SegmentError::Runtime(error) => error.code(),
            SegmentError::Inference { .. } => ErrorCode::InferenceFailed,
            SegmentError::CardMismatch { .. } => ErrorCode::ModelInvalid,
        }
    }
}

impl SegmentOptions {
    /// Reads segment's options from a job's options (the upload's metadata); other keys are ignored.
    pub fn from_job_options(options: &BTreeMap<String, String>) -> Result<SegmentOptions, SegmentError> {
        let model = options.get("model").map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let fast = match options.get("fast").map(|value| value.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("false") | Some("0") | Some("no") => false,
            Some("true") | Some("1") | Some("yes") => true,
            Some(other) => {
                return Err(SegmentError::InvalidOption {
                    name: "fast",
                    value: other.to_owned(),
                    reason: "expected true or false".to_owned(),
                });
            }
        };
        let roi_subset = options
            .get("roi-subset")
            .map(|value| value.split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect())
            .unwrap_or_default();
        Ok(SegmentOptions { model, fast, roi_subset })
    }
}

impl TaskPlan {
    /// The models a job runs (fast or not, only those producing an roi-subset label) and the labels
    /// it keeps; the models still have to be fetched ([`ModelStore::fetch_all`]).
    pub fn select(
        task: &TaskDefinition,
        options: &SegmentOptions,
    ) -> Result<(Vec<TaskModel>, Option<BTreeSet<u8>>), SegmentError> {
        let models = if options.fast {
            if task.fast_models.is_empty() {
                return Err(SegmentError::InvalidOption {
                    name: "fast",
                    value: "true".to_owned(),
                    reason: format!("task '{}' has no fast models", task.name),
                });
            }
            &task.fast_models
        } else {
            &task.models
        };
        if options.roi_subset.is_empty() {
            return Ok((models.clone(), None));
        }
        let mut keep = BTreeSet::new();
        for name in &options.roi_subset {
            let id = task.label_id(name).ok_or_else(|| SegmentError::InvalidOption {
                name: "roi-subset",
                value: options.roi_subset.join(","),
                reason: format!("task '{}' has no label '{name}'", task.name),
            })?;
            keep.insert(id);
        }
        // A model with an explicit map is skipped when it produces none of the kept labels; a model
        // mapped by name is decided once its card is known (see `TaskPlan::new`).
        let models = models
            .iter()
            .filter(|model| model.label_map.as_ref().is_none_or(|map| map.values().any(|id| keep.contains(id))))
            .cloned()
            .collect();
        Ok((models, Some(keep)))
    }

    pub fn new(
        task: TaskDefinition,
        selected: &[TaskModel],
        fetched: &BTreeMap<String, LocalModel>,
        keep: Option<BTreeSet<u8>>,
    ) -> TaskPlan {
        let models = selected
            .iter()
            .filter_map(|model| {
                let local = fetched.get(&model.model)?;
                let map = model.resolved_label_map(&local.card, &task);
                let useful = keep.as_ref().is_none_or(|keep| map.values().any(|id| keep.contains(id)));
                useful.then(|| (local.clone(), map))
            })
            .collect();
        TaskPlan { task, models, keep }
    }

    /// The label table of the job's outputs: the task's labels (only the kept ones with roi-subset).
    pub fn label_table(&self) -> LabelTable {
        let mut table = self.task.label_table(false);
        if let Some(keep) = &self.keep {
            table.labels.retain(|label| u8::try_from(label.id).is_ok_and(|id| keep.contains(&id)));
        }
        table
    }
}

/// A plan from local files: `path` is a model directory (`card.json`, `model.onnx`) or a task's
/// `task.json`, whose models are the directories beside it.
pub fn load_local_plan(path: &std::path::Path, options: &SegmentOptions) -> Result<TaskPlan, SegmentError> {
    if path.is_dir() {
        let model = model_store::load_local_model(path)?;
        let task = model.card.as_task();
        let (selected, keep) = TaskPlan::select(&task, options)?;
        let fetched = BTreeMap::from([(model.card.name.clone(), model)]);
        return Ok(TaskPlan::new(task, &selected, &fetched, keep));
    }
    let bytes = std::fs::read(path).map_err(|_| ModelStoreError::NotFound(path.display().to_string()))?;
    let name = path.parent().and_then(|dir| dir.file_name()).and_then(|name| name.to_str()).unwrap_or("task");
    let task = TaskDefinition::parse(name, &bytes).map_err(ModelStoreError::from)?;
    let root = path.parent().and_then(|dir| dir.parent()).unwrap_or(std::path::Path::new("."));
    let (selected, keep) = TaskPlan::select(&task, options)?;
    let mut fetched = BTreeMap::new();
    for model in &selected {
        if !fetched.contains_key(&model.model) {
            fetched.insert(model.model.clone(), model_store::load_local_model(&root.join(&model.model))?);
        }
    }
    Ok(TaskPlan::new(task, &selected, &fetched, keep))
}

/// The card's window settings, checked against what the network fixes (batch, patch).
fn window_for(card: &ModelCard, network: &dyn Network) -> Result<WindowSettings, SegmentError> {
    let mut window = card.window.clone();
    if let Some(batch) = network.fixed_batch() {
        if batch != window.batch_size {
            return Err(SegmentError::CardMismatch {
                model: card.name.clone(),
                reason: format!("the network fixes the batch at {batch}, the card says {}", window.batch_size),
            });
        }
        window.batch_is_fixed = true;
    }
    let fixed = network.fixed_patch();
    if fixed.iter().zip(window.patch).any(|(fixed, patch)| fixed.is_some_and(|f| f != patch)) {
        return Err(SegmentError::CardMismatch {
            model: card.name.clone(),
            reason: format!("the network's input is {fixed:?}, the card's patch {:?}", window.patch),
        });
    }
    Ok(window)
}

/// Runs every model of `plan` on `ct` and merges their labels (task ids) on the canonical grid:
/// a later model's non-background label replaces what is there. `progress(model, done, total)`.
pub fn segment_with_plan(
    ct: &Volume<i16>,
    plan: &TaskPlan,
    runtime: &dyn NetworkRuntime,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
) -> Result<PlanOutput, SegmentError> {
    if plan.models.iter().any(|(model, _)| model.card.ct_only) {
        classical::check_ct_like(ct)?;
    }
    let mut merged = vec![0u8; ct.voxel_count()];
    let mut reports = Vec::new();
    for (index, (model, label_map)) in plan.models.iter().enumerate() {
        let name = model.card.name.clone();
        let mut network = runtime.network(model)?;
        let window = window_for(&model.card, network.as_ref())?;
        let output = run_sliding_window(ct, &window, network.as_mut(), &|done, total| progress(index, done, total))
            .map_err(|source| SegmentError::Inference { model: name.clone(), source })?;
        let mut lookup = [0u8; 256];
        for (local, task_id) in label_map {
            if plan.keep.as_ref().is_none_or(|keep| keep.contains(task_id)) {
                lookup[usize::from(*local)] = *task_id;
            }
        }
        for (merged, local) in merged.iter_mut().zip(&output.labels) {
            let task_id = lookup[usize::from(*local)];
            if task_id != 0 {
                *merged = task_id;
            }
        }
        info!(
            model = %name,
            tiles = output.report.tiles,
            network_runs = output.report.network_runs,
            inference_ms = output.report.inference.as_millis() as u64,
            total_ms = output.report.total.as_millis() as u64,
            "model ran"
        );
        reports.push((name, output.report));
    }
    Ok((merged, reports))
}

/// Statistics on the canonical grid, labels restored to the upload's grid, both encoded.
pub fn encode_outputs(
    ct: &Volume<i16>,
    canonical_labels: Vec<u8>,
    table: &LabelTable,
    report: &IngestReport,
) -> Result<SegmentOutputs, SegmentError> {
    let canonical_labels = ct.with_voxels(canonical_labels)?;
    // Statistics do not depend on voxel order, so the canonical grid gives the upload's figures.
    let mut stats =
        compute_statistics(&canonical_labels, ct, table).map_err(|e| SegmentError::Encode(e.to_string()))?;
    stats.dims = report.original.dims;
    let labels = report.reorientation.restore(&canonical_labels, report.original.affine)?;
    let labels_nii_gz =
        encode_nifti_gz(&labels, &report.original.geometry).map_err(|e| SegmentError::Encode(e.to_string()))?;
    let mut stats_json = serde_json::to_vec_pretty(&stats).map_err(|e| SegmentError::Encode(e.to_string()))?;
    stats_json.push(b'\n');
    Ok(SegmentOutputs { labels_nii_gz, stats, stats_json })
}

/// Decodes the canonical CT (`volume.nii.gz` bytes).
pub fn decode_canonical(volume_nii_gz: &[u8], max_voxels: u64) -> Result<Volume<i16>, SegmentError> {
    let (decoded, _) = decode_nifti_hounsfield(volume_nii_gz, &DecodeLimits { max_voxels })?;
    Ok(decoded.volume)
}

/// Segments the canonical CT with `segmenter` and maps the labels back to the upload's grid
/// described by `report`.
pub fn segment_canonical(
    volume_nii_gz: &[u8],
    report: &IngestReport,
    max_voxels: u64,
    segmenter: &Segmenter,
    runtime: &dyn NetworkRuntime,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
) -> Result<SegmentOutputs, SegmentError> {
    let ct = decode_canonical(volume_nii_gz, max_voxels)?;
    match segmenter {
        Segmenter::Onnx(plan) => {
            let (labels, _) = segment_with_plan(&ct, plan, runtime, progress)?;
            encode_outputs(&ct, labels, &plan.label_table(), report)
        }
        Segmenter::Classical { .. } => {
            let labels = segment_classical(&ct)?;
            encode_outputs(&ct, labels, &classical_label_table(), report)
        }
    }
}

pub struct SegmentHandler {
    context: StageContext,
    max_voxels: u64,
    settings: SegmentSettings,
    models: ModelStore,
    runtime: Arc<dyn NetworkRuntime>,
}

impl SegmentHandler {
    /// The handler of a segment service on `backends` with `config`'s settings, running networks
    /// with `runtime`.
    pub fn from_config(backends: &Backends, config: &IrisConfig, runtime: Arc<dyn NetworkRuntime>) -> SegmentHandler {
        SegmentHandler {
            context: StageContext::from_config(backends, config),
            max_voxels: config.max_voxels,
            settings: config.segment.clone(),
            models: ModelStore::new(Arc::clone(&backends.objects), config.segment.model_cache_dir.clone()),
            runtime,
        }
    }

    /// Decides what runs for a job with `options`: the job's model when it names one (missing model
    /// or runtime: an error), else the default when it is in the store and ONNX Runtime loads, else
    /// the classical model with the reason.
    pub async fn choose_segmenter(&self, options: &SegmentOptions) -> Result<Segmenter, SegmentError> {
        let requested = options.model.is_some();
        let name = options.model.clone().unwrap_or_else(|| self.settings.default_model.clone());
        if name == CLASSICAL_MODEL_OPTION {
            return Ok(Segmenter::Classical { reason: None });
        }
        let resolved = match self.models.resolve(&name).await? {
            Some(resolved) => resolved,
            None if requested => return Err(ModelStoreError::NotFound(name).into()),
            None => {
                return Ok(Segmenter::Classical {
                    reason: Some(format!("the default model '{name}' is not in the object store (models/{name}/)")),
                });
            }
        };
        if let Err(error) = self.runtime.check() {
            if requested {
                return Err(error.into());
            }
            return Ok(Segmenter::Classical { reason: Some(error.to_string()) });
        }
        let task = match resolved {
            ResolvedModel::Task(task) => task,
            ResolvedModel::Single(card) => card.as_task(),
        };
        let (selected, keep) = TaskPlan::select(&task, options)?;
        let names: Vec<&str> = selected.iter().map(|model| model.model.as_str()).collect();
        let fetched = self.models.fetch_all(&names).await?;
        Ok(Segmenter::Onnx(TaskPlan::new(task, &selected, &fetched, keep)))
    }
}

#[async_trait]
impl TriggeredStage for SegmentHandler {
    fn stage(&self) -> Stage {
        Stage::Segment
    }

    fn trigger(&self) -> Artifact {
        Artifact::Volume
    }

    #[instrument(skip_all, fields(job_id))]
    async fn run_job(&self, job_id: JobId, receive_count: u32, triggered_at: Option<Timestamp>) -> Outcome {
        Span::current().record("job_id", job_id.as_str());
        let job = match enter_stage(&self.context, &job_id, Stage::Segment, receive_count, triggered_at).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        let segmenter = match SegmentOptions::from_job_options(&job.options) {
            Ok(options) => self.choose_segmenter(&options).await,
            Err(error) => Err(error),
        };
        let segmenter = match segmenter {
            Ok(segmenter) => segmenter,
            Err(SegmentError::Store(ModelStoreError::Store { source, .. })) => {
                return outcome_of_port_error(&source, &job_id, Stage::Segment, "reading the model");
            }
            Err(error) => return fail(&job_id, &error),
        };
        if let Segmenter::Classical { reason: Some(reason) } = &segmenter {
            info!(reason = %reason, "no ONNX model ran: using the built-in classical model");
        }
        let report = match self.context.objects.get(&Artifact::IngestReport.key(&job_id)).await {
            Ok(bytes) => match serde_json::from_slice::<IngestReport>(&bytes) {
                Ok(report) => report,
                Err(error) => return fail(&job_id, &SegmentError::Report(error.to_string())),
            },
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Segment, "reading ingest.json"),
        };
        let volume = match self.context.objects.get(&Artifact::Volume.key(&job_id)).await {
            Ok(bytes) => bytes,
            Err(error) => return outcome_of_port_error(&error, &job_id, Stage::Segment, "reading volume.nii.gz"),
        };
        let max_voxels = self.max_voxels;
        let runtime = Arc::clone(&self.runtime);
        let steps = match &segmenter {
            Segmenter::Onnx(plan) => plan.models.len(),
            Segmenter::Classical { .. } => 0,
        };
        let (progress_sender, progress_receiver) = tokio::sync::mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward_progress(self.context.ledger.clone(), job, steps, progress_receiver));
        let work = move || {
            segment_canonical(&volume, &report, max_voxels, &segmenter, runtime.as_ref(), &|model, done, total| {
                let _ = progress_sender.send((model, done, total));
            })
        };
        let cancellation = iris_core::cancel::current();
        let outputs = tokio::task::spawn_blocking(move || iris_core::cancel::run_cancellable(cancellation, work)).await;
        // Every progress event is out before the stage's next state.
        let _ = forwarder.await;
        let outputs = match outputs {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(error)) => return fail(&job_id, &error),
            Err(panic) => return outcome_of_task_panic(&panic, &job_id, Stage::Segment),
        };
        info!(model = %outputs.stats.model, "segmented");
        let summary = StatsSummary {
            model: Some(outputs.stats.model.clone()),
            structures: Some(outputs.stats.labels.iter().filter(|label| label.voxels > 0).count() as u32),
            ..StatsSummary::default()
        };
        // Statistics first, labels last: the label map's notification starts meshing.
        let outputs = vec![
            (Artifact::Stats.key(&job_id), outputs.stats_json),
            (Artifact::Labels.key(&job_id), outputs.labels_nii_gz),
        ];
        write_outputs_and_finish(&self.context, &job_id, Stage::Segment, receive_count, outputs, summary).await
    }
}

/// Least time between two progress events of one model (its first and last are always sent).
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Publishes `JobProgress` events (tiles done of total, model step of steps) for `job`, throttled
/// to one per [`PROGRESS_INTERVAL`]; advisory, so a failed publish is logged and not retried.
async fn forward_progress(
    ledger: iris_core::runtime::JobLedger,
    job: iris_core::job::JobRecord,
    steps: usize,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(usize, usize, usize)>,
) {
    let mut last_sent: Option<(usize, std::time::Instant)> = None;
    while let Some((model, done, total)) = receiver.recv().await {
        let first_of_model = last_sent.is_none_or(|(sent_model, _)| sent_model != model);
        let due = last_sent.is_none_or(|(_, at)| at.elapsed() >= PROGRESS_INTERVAL);
        if !(first_of_model || due || done == total) {
            continue;
        }
        let progress = iris_core::events::StageProgress {
            done: done as u64,
            total: total as u64,
            unit: "tiles".to_owned(),
            step: model as u32 + 1,
            steps: steps as u32,
        };
        let detail = iris_core::events::JobEventDetail::progress_of(&job, progress, Timestamp::now());
        if let Err(error) = ledger.events.publish(&[iris_core::events::EventEnvelope::new(detail)]).await {
            tracing::warn!(%error, "progress event not published");
        }
        last_sent = Some((model, std::time::Instant::now()));
    }
}

fn fail(job_id: &JobId, error: &SegmentError) -> Outcome {
    failure(job_id, Stage::Segment, error.code(), error.to_string())
}

/// Runs the segment worker until `shutdown`, running networks with `runtime`.
pub async fn run_service(
    backends: &Backends,
    config: &IrisConfig,
    runtime: Arc<dyn NetworkRuntime>,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(TriggeredStageHandler(SegmentHandler::from_config(backends, config, runtime)));
    run_worker(handler, backends.queue(QueueRole::Segment), backends.ledger(), config.worker_settings(), shutdown)
        .await;
}
