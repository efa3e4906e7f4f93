//! The port through which segment runs networks. [`NetworkRuntime`] loads a model's network (in
//! production ONNX Runtime, the `iris-onnxruntime` adapter); a [`Network`] is the sliding window's
//! [`InferenceEngine`] plus what the runtime learned of the network's input. Segment names no
//! inference library: it is handed a runtime at start, or [`NoNetworkRuntime`].

use iris_core::ErrorCode;

use crate::model_store::LocalModel;
use crate::sliding_window::InferenceEngine;

/// Loads networks. Implementations load their library once per process and share a network
/// between jobs of the same model (by checksum).
pub trait NetworkRuntime: Send + Sync {
    /// `Ok` when networks can be run at all (the library loads); the reason when not.
    fn check(&self) -> Result<(), RuntimeError>;

    /// The network of `model` (its `model.onnx`, already checked against the card's checksum),
    /// taking patches of the card's patch size.
    fn network(&self, model: &LocalModel) -> Result<Box<dyn Network + '_>, RuntimeError>;
}

/// A loaded network.
pub trait Network: InferenceEngine {
    /// The input's batch dimension when the network fixes it.
    fn fixed_batch(&self) -> Option<usize>;
    /// The input's spatial dimensions where the network fixes them (`None` where dynamic).
    fn fixed_patch(&self) -> [Option<usize>; 3];
    /// Where it runs, as the library names it (e.g. `CPUExecutionProvider`).
    fn execution_provider(&self) -> &'static str;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime is not available: {0}")]
    Unavailable(String),
    #[error("a GPU was required (IRIS_DEVICE=gpu) but CUDA could not be used: {0}")]
    GpuUnavailable(String),
    #[error("the model could not be loaded by ONNX Runtime: {0}")]
    InvalidModel(String),
}

impl RuntimeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RuntimeError::Unavailable(_) => ErrorCode::ModelRuntimeUnavailable,
            RuntimeError::GpuUnavailable(_) => ErrorCode::GpuUnavailable,
            RuntimeError::InvalidModel(_) => ErrorCode::ModelInvalid,
        }
    }
}

/// No inference library in this process: every network is refused with `reason` (the classical
/// model still runs). What a build without an ONNX adapter, and tests of model choice, are given.
pub struct NoNetworkRuntime {
    pub reason: String,
}

impl NetworkRuntime for NoNetworkRuntime {
    fn check(&self) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable(self.reason.clone()))
    }

    fn network(&self, _model: &LocalModel) -> Result<Box<dyn Network + '_>, RuntimeError> {
        Err(RuntimeError::Unavailable(self.reason.clone()))
    }
}
