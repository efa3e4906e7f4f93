//! The segment service's [`NetworkRuntime`] on ONNX Runtime, through the `ort` crate, loaded at run
//! time (`load-dynamic`) from the shared library of the PyPI `onnxruntime` wheel (or
//! `onnxruntime-gpu` for CUDA). The only crate that names `ort`.
//!
//! The library is loaded once per process, on first use ([`OrtRuntime::check`] or the first
//! network): a process that only ever runs the classical model never loads it. When it cannot be
//! loaded, the error says why and segment falls back or fails. Sessions are built once per model
//! checksum and shared between jobs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use iris_core::config::{DeviceChoice, SegmentSettings};
use iris_segment::model_store::LocalModel;
use iris_segment::sliding_window::{InferenceEngine, InferenceError, LogitsConsumer};
use iris_segment::{Network, NetworkRuntime, RuntimeError};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tracing::{info, warn};

/// The ONNX Runtime release the project installs (`scripts/onnx-env.sh install`).
pub const ONNX_RUNTIME_VERSION: &str = "1.31.1";

/// A loaded ONNX Runtime and the session of the model it ran last.
///
/// Only that one session is kept: a session holds its network's weights and an arena sized to its
/// largest activations (gigabytes for TotalSegmentator's networks), so keeping every model's would
/// make a five-model task hold five arenas at once. The next job of the same model reuses it; a
/// task's models are loaded in turn, each freed before the next is built, so memory follows the
/// largest model, not the number of models.
pub struct OnnxRuntime {
    environment: ort::environment::Environment,
    pub library: PathBuf,
    device: DeviceChoice,
    threads: usize,
    last: Mutex<Option<(String, Arc<Mutex<LoadedSession>>)>>,
}

/// A session and what it was built for.
pub struct LoadedSession {
    session: Session,
    /// `CUDAExecutionProvider` or `CPUExecutionProvider`.
    pub execution_provider: &'static str,
    /// The input's batch dimension when the model fixes it.
    pub fixed_batch: Option<usize>,
}

/// [`NetworkRuntime`] on ONNX Runtime with a configuration's settings (`IRIS_DEVICE`,
/// `ORT_DYLIB_PATH`, `IRIS_ORT_THREADS`); loads the library on first use.
pub struct OrtRuntime {
    settings: SegmentSettings,
}

impl OrtRuntime {
    pub fn new(settings: &SegmentSettings) -> OrtRuntime {
        OrtRuntime { settings: settings.clone() }
    }

    /// The loaded runtime (loading it if this is the first use in the process).
    pub fn loaded(&self) -> Result<&'static OnnxRuntime, RuntimeError> {
        onnx_runtime(&self.settings)
    }
}

impl NetworkRuntime for OrtRuntime {
    fn check(&self) -> Result<(), RuntimeError> {
        self.loaded().map(|_| ())
    }

    fn network(&self, model: &LocalModel) -> Result<Box<dyn Network + '_>, RuntimeError> {
        let session = self.loaded()?.session(&model.card.onnx_sha256, &model.onnx_path)?;
        Ok(Box::new(OrtNetwork { session, patch: model.card.window.patch }))
    }
}

/// Loads ONNX Runtime once per process (later calls return the first outcome, whatever their
/// settings: one process runs one configuration).
pub fn onnx_runtime(settings: &SegmentSettings) -> Result<&'static OnnxRuntime, RuntimeError> {
    static RUNTIME: OnceLock<Result<OnnxRuntime, RuntimeError>> = OnceLock::new();
    RUNTIME.get_or_init(|| load(settings)).as_ref().map_err(Clone::clone)
}

/// Where the library is looked for: `ORT_DYLIB_PATH`, else the project's ONNX venv.
pub fn library_location(settings: &SegmentSettings) -> Option<PathBuf> {
    if let Some(path) = &settings.onnx_runtime_library {
        return Some(path.clone());
    }
    let venv = std::env::var_os("IRIS_ONNX_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/iris-onnx-venv")))?;
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(Result::ok)
        .map(|entry| {
            entry.path().join(format!("site-packages/onnxruntime/capi/libonnxruntime.so.{ONNX_RUNTIME_VERSION}"))
        })
        .find(|path| path.is_file())
}

fn load(settings: &SegmentSettings) -> Result<OnnxRuntime, RuntimeError> {
    let library = library_location(settings).ok_or_else(|| {
        RuntimeError::Unavailable(
            "no ONNX Runtime library: set ORT_DYLIB_PATH or run `scripts/onnx-env.sh install`".to_owned(),
        )
    })?;
    if !library.is_file() {
        return Err(RuntimeError::Unavailable(format!("ORT_DYLIB_PATH {} is not a file", library.display())));
    }
    let builder = ort::init_from(&library)
        .map_err(|e| RuntimeError::Unavailable(format!("loading {} failed: {e}", library.display())))?;
    let environment = builder
        .with_name("iris-segment")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    info!(library = %library.display(), device = ?settings.device, "ONNX Runtime loaded");
    Ok(OnnxRuntime {
        environment,
        library,
        device: settings.device,
        threads: settings.onnx_threads,
        last: Mutex::new(None),
    })
}

impl OnnxRuntime {
    /// The session of the model file `path` whose checksum is `sha256`: the kept one when it is
    /// that model's, else a new one, which replaces it (the old session is released first, so the
    /// two never hold memory together unless a caller still holds the old one).
    pub fn session(&self, sha256: &str, path: &Path) -> Result<Arc<Mutex<LoadedSession>>, RuntimeError> {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((kept, session)) = last.as_ref()
            && kept == sha256
        {
            return Ok(Arc::clone(session));
        }
        *last = None;
        let session = Arc::new(Mutex::new(self.build_session(path)?));
        *last = Some((sha256.to_owned(), Arc::clone(&session)));
        Ok(session)
    }

    fn builder(&self) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
        let invalid = |e: &dyn std::fmt::Display| RuntimeError::InvalidModel(e.to_string());
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| invalid(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| invalid(&e))?
            .with_inter_threads(1)
            .map_err(|e| invalid(&e))?;
        if self.threads > 0 {
            builder = builder.with_intra_threads(self.threads).map_err(|e| invalid(&e))?;
        }
        Ok(builder)
    }

    fn build_session(&self, path: &Path) -> Result<LoadedSession, RuntimeError> {
        let invalid = |e: &dyn std::fmt::Display| RuntimeError::InvalidModel(e.to_string());
        let mut cuda_failure = None;
        if self.device != DeviceChoice::Cpu {
            let cuda = ort::ep::CUDA::default().build().error_on_failure();
            match self.builder()?.with_execution_providers([cuda]) {
                Ok(mut builder) => {
                    let session = builder.commit_from_file(path).map_err(|e| invalid(&e))?;
                    log_device_once("CUDAExecutionProvider", None);
                    return LoadedSession::new(session, "CUDAExecutionProvider");
                }
                Err(error) => cuda_failure = Some(error.to_string()),
            }
        }
        if let (DeviceChoice::Gpu, Some(reason)) = (self.device, &cuda_failure) {
            return Err(RuntimeError::GpuUnavailable(reason.clone()));
        }
        let session = self.builder()?.commit_from_file(path).map_err(|e| invalid(&e))?;
        log_device_once("CPUExecutionProvider", cuda_failure.as_deref());
        LoadedSession::new(session, "CPUExecutionProvider")
    }
}

/// One log line per process saying which device runs the models, and why not the GPU.
fn log_device_once(provider: &'static str, cuda_failure: Option<&str>) {
    static LOGGED: OnceLock<()> = OnceLock::new();
    LOGGED.get_or_init(|| match cuda_failure {
        Some(reason) => warn!(execution_provider = provider, cuda_unavailable = reason, "models run on the CPU"),
        None => info!(execution_provider = provider, "models run on this execution provider"),
    });
}

impl LoadedSession {
    fn new(session: Session, execution_provider: &'static str) -> Result<LoadedSession, RuntimeError> {
        let invalid = |reason: String| Err(RuntimeError::InvalidModel(reason));
        if session.inputs().len() != 1 || session.outputs().is_empty() {
            return invalid(format!(
                "the model must have one input and at least one output, it has {} and {}",
                session.inputs().len(),
                session.outputs().len()
            ));
        }
        let Some(shape) = session.inputs()[0].dtype().tensor_shape() else {
            return invalid("the model's input is not a tensor".to_owned());
        };
        if shape.len() != 5 {
            return invalid(format!("the model's input has rank {}, expected [N, 1, Z, Y, X]", shape.len()));
        }
        let fixed_batch = usize::try_from(shape[0]).ok().filter(|n| *n > 0);
        Ok(LoadedSession { session, execution_provider, fixed_batch })
    }

    /// The input's spatial dimensions where the model fixes them (None where dynamic).
    pub fn fixed_patch(&self) -> [Option<usize>; 3] {
        let shape = self.session.inputs()[0].dtype().tensor_shape().cloned();
        std::array::from_fn(|a| shape.as_ref().and_then(|s| usize::try_from(s[a + 2]).ok()).filter(|n| *n > 0))
    }
}

/// A [`Network`] over a shared ONNX Runtime session, for patches of `patch` voxels.
pub struct OrtNetwork {
    session: Arc<Mutex<LoadedSession>>,
    patch: [usize; 3],
}

impl OrtNetwork {
    fn loaded(&self) -> std::sync::MutexGuard<'_, LoadedSession> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Network for OrtNetwork {
    fn fixed_batch(&self) -> Option<usize> {
        self.loaded().fixed_batch
    }

    fn fixed_patch(&self) -> [Option<usize>; 3] {
        self.loaded().fixed_patch()
    }

    fn execution_provider(&self) -> &'static str {
        self.loaded().execution_provider
    }
}

impl InferenceEngine for OrtNetwork {
    fn infer(&mut self, input: &[f32], tiles: usize, consume: LogitsConsumer<'_>) -> Result<(), InferenceError> {
        let runtime_error = |e: &dyn std::fmt::Display| InferenceError::Runtime(e.to_string());
        let [pz, py, px] = self.patch;
        let shape = [tiles as i64, 1, pz as i64, py as i64, px as i64];
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| runtime_error(&e))?;
        let mut loaded = self.session.lock().map_err(|_| InferenceError::Internal("session lock poisoned".into()))?;
        let outputs = loaded.session.run(ort::inputs![tensor]).map_err(|e| runtime_error(&e))?;
        let (_, logits) = outputs[0].try_extract_tensor::<f32>().map_err(|e| runtime_error(&e))?;
        // The output belongs to the session's run, so the session stays locked while it is read;
        // on the CPU nothing else could use the cores meanwhile anyway.
        consume(logits)
    }

    fn runs_on_accelerator(&self) -> bool {
        self.execution_provider() != "CPUExecutionProvider"
    }
}
