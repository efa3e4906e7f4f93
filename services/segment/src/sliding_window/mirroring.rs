//! Step 6: test-time mirroring. A batch's logits averaged over the mirror combinations (each run
//! on the flipped input, its output flipped back), handed to the strategy's consumer.

use super::{InferenceEngine, InferenceError, LogitsConsumer, WindowSettings};

/// Reverses `data` (`planes` planes of `patch` voxels each) along the spatial axes in `axes`.
#[cfg(test)]
pub(super) fn flip(data: &[f32], patch: [usize; 3], axes: &[usize]) -> Vec<f32> {
    let mut out = Vec::new();
    flip_into(data, patch, axes, &mut out);
    out
}

/// [`flip`] into a reused buffer.
pub(super) fn flip_into(data: &[f32], patch: [usize; 3], axes: &[usize], out: &mut Vec<f32>) {
    let [pz, py, px] = patch;
    let flip_axis = |axis: usize| axes.contains(&axis);
    let (flip_z, flip_y, flip_x) = (flip_axis(0), flip_axis(1), flip_axis(2));
    let plane_len = pz * py * px;
    out.clear();
    out.reserve(data.len());
    for plane in data.chunks_exact(plane_len) {
        for z in 0..pz {
            let source_z = if flip_z { pz - 1 - z } else { z };
            for y in 0..py {
                let source_y = if flip_y { py - 1 - y } else { y };
                let row = &plane[(source_z * py + source_y) * px..][..px];
                if flip_x {
                    out.extend(row.iter().rev());
                } else {
                    out.extend_from_slice(row);
                }
            }
        }
    }
}

/// Reused buffers of the mirrored runs.
#[derive(Default)]
pub(super) struct MirrorScratch {
    flipped_input: Vec<f32>,
    flipped_output: Vec<f32>,
    sums: Vec<f32>,
}

/// Step 6: the network's output for a batch, averaged over the mirror combinations, handed to
/// `consume`. Without mirroring the logits are handed over in place.
pub(super) fn predict_with_mirroring(
    engine: &mut dyn InferenceEngine,
    input: &[f32],
    tiles: usize,
    settings: &WindowSettings,
    combinations: &[Vec<usize>],
    scratch: &mut MirrorScratch,
    consume: LogitsConsumer<'_>,
) -> Result<(), InferenceError> {
    let expected = tiles * settings.channels * settings.patch.iter().product::<usize>();
    let check = |logits: &[f32]| {
        if logits.len() == expected {
            Ok(())
        } else {
            Err(InferenceError::OutputSize { tiles, expected, got: logits.len() })
        }
    };
    if combinations.is_empty() {
        return engine.infer(input, tiles, &mut |logits| {
            check(logits)?;
            consume(logits)
        });
    }
    let MirrorScratch { flipped_input, flipped_output, sums } = scratch;
    if sums.capacity() < expected {
        *sums = iris_volume::memory::large_vec_with_capacity(expected);
    }
    engine.infer(input, tiles, &mut |logits| {
        check(logits)?;
        sums.clear();
        sums.extend_from_slice(logits);
        Ok(())
    })?;
    for axes in combinations {
        flip_into(input, settings.patch, axes, flipped_input);
        engine.infer(flipped_input, tiles, &mut |logits| {
            check(logits)?;
            flip_into(logits, settings.patch, axes, flipped_output);
            Ok(())
        })?;
        for (sum, value) in sums.iter_mut().zip(flipped_output.iter()) {
            *sum += value;
        }
    }
    let runs = (combinations.len() + 1) as f32;
    for value in sums.iter_mut() {
        *value /= runs;
    }
    consume(sums)
}
