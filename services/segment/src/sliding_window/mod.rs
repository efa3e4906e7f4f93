//! nnU-Net-style sliding-window inference over a canonical CT volume, exactly as
//! `docs/segmentation.md` specifies it (steps 1–9), so that the Python reference in
//! `bench/segment/reference.py` gives the same labels voxel for voxel.
//!
//! The network itself is behind the [`InferenceEngine`] port: ONNX Runtime in production (the
//! `iris-onnxruntime` adapter), anything that maps patches to logits in tests.
//!
//! One [`TilePlan`] (steps 1–5: the normalised, resampled, padded volume, the tiles, the Gaussian
//! map, the mirror combinations) is run by one of two strategies: [`serial`] on the CPU, where the
//! network already uses every core, cutting, running and accumulating one batch after another with
//! each batch's logits read where the runtime wrote them; or [`pipelined`] when the network runs on
//! an accelerator, with cutting, inference and accumulation on three threads joined by bounded
//! channels. Both accumulate into an [`Accumulator`] that spans only the tile rows still open along
//! Z and only the model grid's voxels (not the padding up to the patch), which bounds memory by the
//! patch depth rather than the scan's length. Step 9 (back to the canonical grid) follows.

mod accumulator;
mod logits;
mod mirroring;
mod pipelined;
mod plan;
mod resampling;
mod serial;

use std::time::{Duration, Instant};

use iris_volume::volume::Volume;

pub use logits::{ModelGridLogits, run_sliding_window_logits};
pub use plan::{gaussian_importance_map, mirror_combinations, resampled_length, tile_grid, tile_starts};
pub use resampling::{
    Resampling, zoom_hounsfield_like_totalsegmentator, zoom_labels_like_totalsegmentator, zoomed_length,
};

use accumulator::{Accumulator, nearest_to_canonical};
use plan::TilePlan;

/// How a model wants its input: everything per axis is in the tensor's spatial order (z, y, x),
/// where x, y, z are the canonical RAS voxel axes (x fastest in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSettings {
    pub spacing_mm: [f64; 3],
    pub patch: [usize; 3],
    /// nnU-Net's `tile_step_size`, in (0, 1].
    pub tile_step: f64,
    /// Spatial tensor axes (0 = z, 1 = y, 2 = x) mirrored at test time; empty for none.
    pub mirror_axes: Vec<usize>,
    pub batch_size: usize,
    /// The network's batch dimension is fixed at `batch_size`: short batches are filled up.
    pub batch_is_fixed: bool,
    /// Output channels (local labels 0..channels, 0 = background); at most 256.
    pub channels: usize,
    pub normalization: CtNormalization,
    /// How the CT reaches the model grid and the labels come back (`resampling` in the card).
    pub resampling: Resampling,
}

/// CT normalisation: clip to `[clip_low, clip_high]` HU, then `(x − mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtNormalization {
    pub clip_low: f64,
    pub clip_high: f64,
    pub mean: f64,
    pub std: f64,
}

/// The network, as the sliding window sees it (a port: ONNX Runtime is one adapter).
pub trait InferenceEngine {
    /// Runs the network on `tiles` patches laid out `[tiles, 1, pz, py, px]` and hands its logits,
    /// laid out `[tiles, channels, pz, py, px]`, to `consume` while the engine still owns them: a
    /// gigabyte-sized output is read where the runtime wrote it, not copied out first. An error
    /// from `consume` is returned as it is.
    fn infer(&mut self, input: &[f32], tiles: usize, consume: LogitsConsumer<'_>) -> Result<(), InferenceError>;

    /// The network runs on an accelerator, leaving the CPU free: tile cutting and accumulation then
    /// overlap inference on threads of their own.
    fn runs_on_accelerator(&self) -> bool {
        false
    }
}

/// What reads a batch's logits in place (see [`InferenceEngine::infer`]).
pub type LogitsConsumer<'a> = &'a mut dyn FnMut(&[f32]) -> Result<(), InferenceError>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    #[error("the model failed to run: {0}")]
    Runtime(String),
    #[error("the model returned {got} values for a batch of {tiles} tiles; its card implies {expected}")]
    OutputSize { tiles: usize, expected: usize, got: usize },
    #[error("the sliding window stopped: {0}")]
    Internal(String),
    /// The stage passed its processing limit ([`iris_core::cancel`]): stopped between batches.
    #[error("{0}")]
    Cancelled(#[from] iris_core::cancel::Cancelled),
}

/// Labels of one model on the canonical grid (local ids) and what the run cost.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowOutput {
    /// One local label per canonical voxel, in the volume's order.
    pub labels: Vec<u8>,
    pub report: WindowReport,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    /// Model-grid size (z, y, x) before padding.
    pub model_grid: [usize; 3],
    pub tiles: usize,
    /// Network runs (tiles × mirror combinations, counted per batch).
    pub network_runs: usize,
    pub preprocess: Duration,
    /// Wall time spent inside [`InferenceEngine::infer`], less the time its consumer spent
    /// accumulating (on the CPU path, where the logits are accumulated in place).
    pub inference: Duration,
    /// Wall time of weighting and summing the tiles' logits and of the final argmax (on the CPU
    /// path, where it does not overlap inference).
    pub accumulation: Duration,
    /// Wall time of the whole sliding window, preprocessing to labels on the canonical grid.
    pub total: Duration,
}

/// What running the tiles cost, whichever strategy ran them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RunTimings {
    inference: Duration,
    accumulation: Duration,
    network_runs: usize,
}

/// Segments `ct` (int16 HU, canonical RAS) with `engine`; `progress(done, total)` is called after
/// every accumulated tile.
pub fn run_sliding_window(
    ct: &Volume<i16>,
    settings: &WindowSettings,
    engine: &mut dyn InferenceEngine,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<WindowOutput, InferenceError> {
    let started = Instant::now();
    let plan = TilePlan::new(ct, settings);
    let preprocess = started.elapsed();
    let (model_labels, timings) = if engine.runs_on_accelerator() {
        pipelined::run(&plan, settings, engine, progress)?
    } else {
        serial::run(&plan, settings, engine, progress)?
    };
    let labels = match settings.resampling {
        Resampling::HalfPixel => nearest_to_canonical(&model_labels, plan.padded.model, ct.dims()),
        Resampling::TotalSegmentator => zoom_labels_like_totalsegmentator(&model_labels, plan.padded.model, ct.dims()),
    };
    Ok(WindowOutput {
        labels,
        report: WindowReport {
            model_grid: plan.padded.model,
            tiles: plan.tiles.len(),
            network_runs: timings.network_runs,
            preprocess,
            inference: timings.inference,
            accumulation: timings.accumulation,
            total: started.elapsed(),
        },
    })
}

#[cfg(test)]
mod tests;
