//! The sliding window's logits themselves, on the model grid: each voxel's Gaussian-weighted sum of
//! the tiles' logits divided by the sum of the weights, as nnU-Net's predictor returns them
//! (`predict_sliding_window_return_logits`). The labels never need them (the argmax of the sums is
//! the argmax of the mean), so the labelling path does not keep them; this one does, whole, for
//! comparisons with nnU-Net and for inspecting a model (memory: channels × model grid floats).

use iris_volume::volume::Volume;

use super::mirroring::{MirrorScratch, predict_with_mirroring};
use super::plan::TilePlan;
use super::{InferenceEngine, InferenceError, WindowSettings};

/// Logits on the model grid (z, y, x; x fastest), `[channel][z][y][x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGridLogits {
    pub channels: usize,
    /// The model grid (z, y, x), before padding.
    pub grid: [usize; 3],
    pub values: Vec<f32>,
}

/// Steps 1–6 of the sliding window, then each voxel's weighted mean of the tiles' logits.
pub fn run_sliding_window_logits(
    ct: &Volume<i16>,
    settings: &WindowSettings,
    engine: &mut dyn InferenceEngine,
) -> Result<ModelGridLogits, InferenceError> {
    let plan = TilePlan::new(ct, settings);
    let [dz, dy, dx] = plan.padded.dims;
    let [pz, py, px] = settings.patch;
    let padded_len = dz * dy * dx;
    let mut sums = vec![0f32; settings.channels * padded_len];
    let mut weights = vec![0f32; padded_len];
    let mut scratch = MirrorScratch::default();
    let per_tile = plan.logits_per_tile;
    let patch_len = pz * py * px;
    for batch in plan.batches() {
        let input = plan.cut(batch, settings);
        predict_with_mirroring(
            engine,
            &input,
            plan.runs_in(batch, settings),
            settings,
            &plan.combinations,
            &mut scratch,
            &mut |logits| {
                for (index, start) in batch.iter().enumerate() {
                    let tile = &logits[index * per_tile..(index + 1) * per_tile];
                    for z in 0..pz {
                        for y in 0..py {
                            let at = ((start[0] + z) * dy + start[1] + y) * dx + start[2];
                            let from = (z * py + y) * px;
                            let gaussian = &plan.gaussian[from..from + px];
                            for (weight, g) in weights[at..at + px].iter_mut().zip(gaussian) {
                                *weight += g;
                            }
                            for channel in 0..settings.channels {
                                let source = &tile[channel * patch_len + from..][..px];
                                let sum = &mut sums[channel * padded_len + at..][..px];
                                for ((sum, logit), g) in sum.iter_mut().zip(source).zip(gaussian) {
                                    *sum += logit * g;
                                }
                            }
                        }
                    }
                }
                Ok(())
            },
        )?;
    }
    let grid = plan.padded.model;
    let cropped_weights = plan.padded.crop(&weights);
    let mut values = Vec::with_capacity(settings.channels * grid.iter().product::<usize>());
    for channel in 0..settings.channels {
        let channel_sums = &sums[channel * padded_len..(channel + 1) * padded_len];
        let cropped_sums = plan.padded.crop(channel_sums);
        values.extend(cropped_sums.iter().zip(&cropped_weights).map(|(sum, weight)| sum / weight));
    }
    Ok(ModelGridLogits { channels: settings.channels, grid, values })
}
