//! nnU-Net-style sliding-window inference over a canonical CT volume, exactly as
//! `docs/segmentation.md` specifies it (steps 1–9), so that the Python reference in
//! `bench/segment/reference.py` gives the same labels voxel for voxel.
//!
//! The network itself is behind the [`InferenceEngine`] port: ONNX Runtime in production
//! ([`crate::onnx_runtime::OrtInferenceEngine`]), anything that maps patches to logits in tests.
//!
//! Reading tiles, inference and accumulation run on three threads joined by bounded channels, so
//! cutting the next batch and accumulating the last one overlap the network's own time. The
//! accumulator spans only the tile rows still open along Z (see [`Accumulator`]), which bounds
//! memory by the patch depth rather than the scan's length.

use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use iris_shared::volume::Volume;
use rayon::prelude::*;

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

/// Segments `ct` (int16 HU, canonical RAS) with `engine`; `progress(done, total)` is called after
/// every accumulated tile.
pub fn run_sliding_window(
    ct: &Volume<i16>,
    settings: &WindowSettings,
    engine: &mut dyn InferenceEngine,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<WindowOutput, InferenceError> {
    let started = Instant::now();
    let canonical = ct.dims();
    let spacing = ct.spacing();
    let input_zyx = [canonical[2], canonical[1], canonical[0]];
    let spacing_zyx = [spacing[2], spacing[1], spacing[0]];
    let model_grid: [usize; 3] =
        std::array::from_fn(|a| resampled_length(input_zyx[a], spacing_zyx[a], settings.spacing_mm[a]));
    let padded = PaddedGrid::new(model_grid, settings.patch);
    let volume = normalise_resample_and_pad(ct, settings, &padded);
    let preprocess = started.elapsed();

    let starts: [Vec<usize>; 3] =
        std::array::from_fn(|a| tile_starts(padded.dims[a], settings.patch[a], settings.tile_step));
    let tiles = tile_grid(&starts);
    let gaussian = gaussian_importance_map(settings.patch);
    let combinations = mirror_combinations(&settings.mirror_axes);
    let total_tiles = tiles.len();
    let batch_size = settings.batch_size.max(1);
    let patch_len: usize = settings.patch.iter().product();
    let expected_per_tile = settings.channels * patch_len;

    let mut inference = Duration::ZERO;
    let mut accumulation = Duration::ZERO;
    let mut network_runs = 0;
    let mut failure = None;
    let padded_labels = if !engine.runs_on_accelerator() {
        // On the CPU the network already uses every core: accumulating alongside it would only
        // slow its threads down, so tiles are cut, run and accumulated one batch after another,
        // each batch's logits read where ONNX Runtime wrote them.
        let mut accumulator = Accumulator::new(settings.channels, padded.dims, settings.patch);
        let (mut scratch, mut done) = (MirrorScratch::default(), 0);
        for batch in tiles.chunks(batch_size) {
            let input = cut_batch(&volume, padded.dims, settings.patch, batch, batch_size, settings.batch_is_fixed);
            let runs_in_batch = if settings.batch_is_fixed { batch_size } else { batch.len() };
            let timer = Instant::now();
            let mut accumulating = Duration::ZERO;
            predict_with_mirroring(
                engine,
                &input,
                runs_in_batch,
                settings,
                &combinations,
                &mut scratch,
                &mut |logits| {
                    let timer = Instant::now();
                    for (index, start) in batch.iter().enumerate() {
                        accumulator.add_tile(
                            *start,
                            &logits[index * expected_per_tile..(index + 1) * expected_per_tile],
                            &gaussian,
                        );
                        done += 1;
                        progress(done, total_tiles);
                    }
                    accumulating += timer.elapsed();
                    Ok(())
                },
            )?;
            inference += timer.elapsed().saturating_sub(accumulating);
            accumulation += accumulating;
            network_runs += combinations.len() + 1;
        }
        let timer = Instant::now();
        let labels = accumulator.finish();
        accumulation += timer.elapsed();
        Ok(labels)
    } else {
        std::thread::scope(|scope| {
            let (tile_sender, tile_receiver) = sync_channel::<(Vec<[usize; 3]>, Vec<f32>)>(2);
            let (prediction_sender, prediction_receiver) = sync_channel::<(Vec<[usize; 3]>, Vec<f32>)>(2);
            let (volume, tiles, padded, gaussian) = (&volume, &tiles, &padded, &gaussian);
            scope.spawn(move || {
                for batch in tiles.chunks(batch_size) {
                    let input =
                        cut_batch(volume, padded.dims, settings.patch, batch, batch_size, settings.batch_is_fixed);
                    if tile_sender.send((batch.to_vec(), input)).is_err() {
                        return;
                    }
                }
            });
            // Used prediction buffers go back to the inference thread, so each is allocated once.
            let (recycle_sender, recycle_receiver) = sync_channel::<Vec<f32>>(4);
            let accumulator = scope.spawn(move || {
                let mut accumulator = Accumulator::new(settings.channels, padded.dims, settings.patch);
                let mut done = 0;
                for (batch, prediction) in prediction_receiver {
                    for (index, start) in batch.iter().enumerate() {
                        let logits = &prediction[index * expected_per_tile..(index + 1) * expected_per_tile];
                        accumulator.add_tile(*start, logits, gaussian);
                        done += 1;
                        progress(done, total_tiles);
                    }
                    let _ = recycle_sender.try_send(prediction);
                }
                accumulator.finish()
            });
            let mut scratch = MirrorScratch::default();
            for (batch, input) in tile_receiver {
                let runs_in_batch = if settings.batch_is_fixed { batch_size } else { batch.len() };
                let mut prediction = recycle_receiver
                    .try_recv()
                    .unwrap_or_else(|_| iris_shared::memory::large_vec_with_capacity(batch_size * expected_per_tile));
                let timer = Instant::now();
                let result = predict_with_mirroring(
                    engine,
                    &input,
                    runs_in_batch,
                    settings,
                    &combinations,
                    &mut scratch,
                    &mut |logits| {
                        // The accumulator thread reads this copy while the next batch runs.
                        prediction.clear();
                        prediction.extend_from_slice(&logits[..batch.len() * expected_per_tile]);
                        Ok(())
                    },
                );
                inference += timer.elapsed();
                network_runs += combinations.len() + 1;
                match result {
                    Ok(()) => {
                        if prediction_sender.send((batch, prediction)).is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            drop(prediction_sender);
            accumulator.join()
        })
    };
    if let Some(error) = failure {
        return Err(error);
    }
    let padded_labels =
        padded_labels.map_err(|_| InferenceError::Internal("the accumulator thread panicked".to_owned()))?;
    let model_labels = padded.crop(&padded_labels);
    let labels = nearest_to_canonical(&model_labels, model_grid, canonical);
    Ok(WindowOutput {
        labels,
        report: WindowReport {
            model_grid,
            tiles: total_tiles,
            network_runs,
            preprocess,
            inference,
            accumulation,
            total: started.elapsed(),
        },
    })
}

/// Model-grid length of an axis of `length` voxels of `spacing` mm resampled to `target` mm:
/// `max(1, floor(length · spacing / target + 0.5))`.
pub fn resampled_length(length: usize, spacing: f64, target: f64) -> usize {
    ((length as f64 * spacing / target + 0.5).floor() as usize).max(1)
}

/// Tile starts along one axis (nnU-Net's `compute_steps_for_sliding_window`), for a padded
/// length `length >= patch`.
pub fn tile_starts(length: usize, patch: usize, tile_step: f64) -> Vec<usize> {
    let step = patch as f64 * tile_step;
    let span = (length - patch) as f64;
    let count = (span / step).ceil() as usize + 1;
    if count <= 1 {
        return vec![0];
    }
    let actual = span / (count - 1) as f64;
    (0..count).map(|index| (actual * index as f64).round_ties_even() as usize).collect()
}

/// The Gaussian importance map of a patch (z, y, x order, x fastest): nnU-Net's
/// `compute_gaussian` with σ = patch / 8, maximum 1 at the centre, zeros replaced by the smallest
/// non-zero value.
pub fn gaussian_importance_map(patch: [usize; 3]) -> Vec<f32> {
    let axis: [Vec<f64>; 3] = std::array::from_fn(|a| gaussian_axis(patch[a]));
    let mut map = Vec::with_capacity(patch.iter().product());
    for z in 0..patch[0] {
        for y in 0..patch[1] {
            let zy = axis[0][z] * axis[1][y];
            map.extend(axis[2].iter().map(|x| (zy * x) as f32));
        }
    }
    let smallest = map.iter().copied().filter(|value| *value > 0.0).fold(f32::INFINITY, f32::min);
    for value in &mut map {
        if *value == 0.0 {
            *value = smallest;
        }
    }
    map
}

/// Every non-empty combination of `axes`, by size, each in order (Python's
/// `itertools.combinations(axes, k)` for k = 1, 2, …).
pub fn mirror_combinations(axes: &[usize]) -> Vec<Vec<usize>> {
    let mut combinations = Vec::new();
    for size in 1..=axes.len() {
        let mut chosen = Vec::with_capacity(size);
        push_combinations(axes, size, 0, &mut chosen, &mut combinations);
    }
    combinations
}

/// The tile starts' Cartesian product, ordered by z start, then y, then x.
pub fn tile_grid(starts: &[Vec<usize>; 3]) -> Vec<[usize; 3]> {
    let mut tiles = Vec::with_capacity(starts.iter().map(Vec::len).product());
    for &z in &starts[0] {
        for &y in &starts[1] {
            for &x in &starts[2] {
                tiles.push([z, y, x]);
            }
        }
    }
    tiles
}

/// The model grid padded up to at least the patch, as nnU-Net pads (centred, zeros).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PaddedGrid {
    model: [usize; 3],
    dims: [usize; 3],
    before: [usize; 3],
}

impl PaddedGrid {
    fn new(model: [usize; 3], patch: [usize; 3]) -> PaddedGrid {
        let dims = std::array::from_fn(|a| model[a].max(patch[a]));
        let before = std::array::from_fn(|a| (dims[a] - model[a]) / 2);
        PaddedGrid { model, dims, before }
    }

    fn crop(&self, padded: &[u8]) -> Vec<u8> {
        let [pz, py, px] = self.dims;
        let [mz, my, mx] = self.model;
        let mut out = Vec::with_capacity(mz * my * mx);
        for z in 0..mz {
            for y in 0..my {
                let start = ((z + self.before[0]) * py + y + self.before[1]) * px + self.before[2];
                out.extend_from_slice(&padded[start..start + mx]);
            }
        }
        debug_assert_eq!(out.len(), mz * my * mx);
        let _ = pz;
        out
    }
}

/// Per-axis linear interpolation weights: output index → (i0, i1, w).
fn interpolation_weights(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    (0..output)
        .map(|o| {
            let coordinate = ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).clamp(0.0, (input - 1) as f64);
            let i0 = coordinate.floor() as usize;
            (i0, (i0 + 1).min(input - 1), coordinate - i0 as f64)
        })
        .collect()
}

fn lerp(a: f64, b: f64, w: f64) -> f64 {
    a * (1.0 - w) + b * w
}

/// Steps 1–3: normalise in f64, resample separably (x, then y, then z) in f64, round to f32 and
/// place the result in the zero-padded model grid (z, y, x order, x fastest).
fn normalise_resample_and_pad(ct: &Volume<i16>, settings: &WindowSettings, padded: &PaddedGrid) -> Vec<f32> {
    let [nx, ny, nz] = ct.dims();
    let [mz, my, mx] = padded.model;
    let [_, py, px] = padded.dims;
    let weights_x = interpolation_weights(nx, mx);
    let weights_y = interpolation_weights(ny, my);
    let weights_z = interpolation_weights(nz, mz);
    let norm = settings.normalization;
    let hounsfield = ct.voxels();
    // One input slice, resampled in x then y: my × mx values in f64.
    let slice_xy = |k: usize| -> Vec<f64> {
        let base = k * nx * ny;
        let normalised: Vec<f64> = hounsfield[base..base + nx * ny]
            .iter()
            .map(|&hu| (f64::from(hu).max(norm.clip_low).min(norm.clip_high) - norm.mean) / norm.std)
            .collect();
        let mut along_x = vec![0.0f64; ny * mx];
        for j in 0..ny {
            let row = &normalised[j * nx..(j + 1) * nx];
            for (o, &(i0, i1, w)) in weights_x.iter().enumerate() {
                along_x[j * mx + o] = lerp(row[i0], row[i1], w);
            }
        }
        let mut along_y = vec![0.0f64; my * mx];
        for (o, &(j0, j1, w)) in weights_y.iter().enumerate() {
            for x in 0..mx {
                along_y[o * mx + x] = lerp(along_x[j0 * mx + x], along_x[j1 * mx + x], w);
            }
        }
        along_y
    };
    let mut volume: Vec<f32> = iris_shared::memory::large_zeroed_vec(padded.dims.iter().product());
    let slice_len = py * px;
    volume.par_chunks_mut(slice_len).skip(padded.before[0]).take(mz).enumerate().for_each(|(z, slice)| {
        let (k0, k1, w) = weights_z[z];
        let first = slice_xy(k0);
        let second = if k1 == k0 { None } else { Some(slice_xy(k1)) };
        for y in 0..my {
            let row = &mut slice[(y + padded.before[1]) * px + padded.before[2]..][..mx];
            for (x, out) in row.iter_mut().enumerate() {
                let a = first[y * mx + x];
                let b = second.as_ref().map_or(a, |second| second[y * mx + x]);
                *out = lerp(a, b, w) as f32;
            }
        }
    });
    volume
}

fn gaussian_axis(patch: usize) -> Vec<f64> {
    let sigma = patch as f64 / 8.0;
    let radius = (4.0 * sigma + 0.5).floor() as i64;
    let centre = (patch / 2) as i64;
    (0..patch as i64)
        .map(|index| {
            let d = index - centre;
            if d.abs() > radius { 0.0 } else { (-((d * d) as f64) / (2.0 * sigma * sigma)).exp() }
        })
        .collect()
}

fn push_combinations(
    axes: &[usize],
    size: usize,
    from: usize,
    chosen: &mut Vec<usize>,
    combinations: &mut Vec<Vec<usize>>,
) {
    if chosen.len() == size {
        combinations.push(chosen.clone());
        return;
    }
    for index in from..axes.len() {
        chosen.push(axes[index]);
        push_combinations(axes, size, index + 1, chosen, combinations);
        chosen.pop();
    }
}

/// Copies `batch`'s tiles out of the padded volume (`[tiles, 1, pz, py, px]`); a fixed-size batch
/// is filled up with copies of its last tile.
fn cut_batch(
    volume: &[f32],
    dims: [usize; 3],
    patch: [usize; 3],
    batch: &[[usize; 3]],
    batch_size: usize,
    batch_is_fixed: bool,
) -> Vec<f32> {
    let [_, dy, dx] = dims;
    let [pz, py, px] = patch;
    let tiles = if batch_is_fixed { batch_size.max(batch.len()) } else { batch.len() };
    let mut input = Vec::with_capacity(tiles * pz * py * px);
    for index in 0..tiles {
        let [z0, y0, x0] = batch[index.min(batch.len() - 1)];
        for z in z0..z0 + pz {
            for y in y0..y0 + py {
                let start = (z * dy + y) * dx + x0;
                input.extend_from_slice(&volume[start..start + px]);
            }
        }
    }
    input
}

/// Reverses `data` (`planes` planes of `patch` voxels each) along the spatial axes in `axes`.
#[cfg(test)]
fn flip(data: &[f32], patch: [usize; 3], axes: &[usize]) -> Vec<f32> {
    let mut out = Vec::new();
    flip_into(data, patch, axes, &mut out);
    out
}

/// [`flip`] into a reused buffer.
fn flip_into(data: &[f32], patch: [usize; 3], axes: &[usize], out: &mut Vec<f32>) {
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
struct MirrorScratch {
    flipped_input: Vec<f32>,
    flipped_output: Vec<f32>,
    sums: Vec<f32>,
}

/// Step 6: the network's output for a batch, averaged over the mirror combinations, handed to
/// `consume`. Without mirroring the logits are handed over in place.
fn predict_with_mirroring(
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
        *sums = iris_shared::memory::large_vec_with_capacity(expected);
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

/// Gaussian-weighted logit sums over a window of `patch[0]` z slices of the padded grid.
///
/// Tiles arrive in z-start order. When a tile starts further along z than the window's origin,
/// no later tile can touch the slices before that start, so they are reduced to labels (first
/// maximum wins) and the window moves on: memory is `channels × patch_z × Y × X` floats.
struct Accumulator {
    channels: usize,
    dims: [usize; 3],
    patch: [usize; 3],
    origin_z: usize,
    /// `[channel][window z][y][x]`.
    sums: Vec<f32>,
    labels: Vec<u8>,
}

impl Accumulator {
    fn new(channels: usize, dims: [usize; 3], patch: [usize; 3]) -> Accumulator {
        let slice = dims[1] * dims[2];
        Accumulator {
            channels,
            dims,
            patch,
            origin_z: 0,
            sums: iris_shared::memory::large_zeroed_vec(channels * patch[0] * slice),
            labels: vec![0; dims.iter().product()],
        }
    }

    fn slice_len(&self) -> usize {
        self.dims[1] * self.dims[2]
    }

    fn channel_len(&self) -> usize {
        self.patch[0] * self.slice_len()
    }

    fn add_tile(&mut self, start: [usize; 3], logits: &[f32], gaussian: &[f32]) {
        if start[0] > self.origin_z {
            self.advance_to(start[0]);
        }
        let [pz, py, px] = self.patch;
        let [_, dy, dx] = self.dims;
        let (channel_len, patch_len) = (self.channel_len(), pz * py * px);
        let origin_z = self.origin_z;
        // Channels are independent and each voxel's sum is updated by exactly one thread, in tile
        // order, so the parallel result is bit-identical to the serial one.
        self.sums.par_chunks_mut(channel_len).zip(logits.par_chunks(patch_len)).for_each(|(sums, tile)| {
            for z in 0..pz {
                let window_z = start[0] + z - origin_z;
                for y in 0..py {
                    let at = (window_z * dy + start[1] + y) * dx + start[2];
                    let from = (z * py + y) * px;
                    let row = &mut sums[at..at + px];
                    for ((sum, logit), weight) in
                        row.iter_mut().zip(&tile[from..from + px]).zip(&gaussian[from..from + px])
                    {
                        *sum += logit * weight;
                    }
                }
            }
        });
    }

    /// Finalises slices `[origin_z, new_origin)` and shifts the window to start at `new_origin`.
    fn advance_to(&mut self, new_origin: usize) {
        let depth = self.patch[0];
        let finished = (new_origin - self.origin_z).min(depth);
        for window_z in 0..finished {
            self.finalise_slice(window_z);
        }
        let (slice, channel_len) = (self.slice_len(), self.channel_len());
        for channel in 0..self.channels {
            let sums = &mut self.sums[channel * channel_len..(channel + 1) * channel_len];
            sums.copy_within(finished * slice.., 0);
            sums[(depth - finished) * slice..].fill(0.0);
        }
        self.origin_z = new_origin;
    }

    fn finalise_slice(&mut self, window_z: usize) {
        let z = self.origin_z + window_z;
        if z >= self.dims[0] {
            return;
        }
        let (slice, channel_len) = (self.slice_len(), self.channel_len());
        let mut best: Vec<f32> = self.sums[window_z * slice..(window_z + 1) * slice].to_vec();
        let labels = &mut self.labels[z * slice..(z + 1) * slice];
        labels.fill(0);
        for channel in 1..self.channels {
            let sums = &self.sums[channel * channel_len + window_z * slice..][..slice];
            for ((best, label), &value) in best.iter_mut().zip(labels.iter_mut()).zip(sums) {
                if value > *best {
                    *best = value;
                    *label = channel as u8;
                }
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for window_z in 0..self.patch[0] {
            self.finalise_slice(window_z);
        }
        self.labels
    }
}

/// Step 9: model-grid labels (z, y, x; x fastest) to the canonical grid by nearest neighbour.
fn nearest_to_canonical(model_labels: &[u8], model: [usize; 3], canonical: [usize; 3]) -> Vec<u8> {
    let [mz, my, mx] = model;
    let [nx, ny, nz] = canonical;
    let nearest = |o: usize, n: usize, m: usize| (((o as f64 + 0.5) * m as f64 / n as f64).floor() as usize).min(m - 1);
    let source_x: Vec<usize> = (0..nx).map(|i| nearest(i, nx, mx)).collect();
    let mut labels = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        let z = nearest(k, nz, mz);
        for j in 0..ny {
            let y = nearest(j, ny, my);
            let row = &model_labels[(z * my + y) * mx..][..mx];
            labels.extend(source_x.iter().map(|&x| row[x]));
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_starts_follow_nnunet() {
        // Hand-computed with nnU-Net's compute_steps_for_sliding_window.
        assert_eq!(tile_starts(128, 128, 0.5), vec![0]);
        assert_eq!(tile_starts(200, 128, 0.5), vec![0, 36, 72]);
        assert_eq!(tile_starts(300, 128, 0.5), vec![0, 57, 115, 172]);
        assert_eq!(tile_starts(100, 16, 0.8), vec![0, 12, 24, 36, 48, 60, 72, 84]);
        assert_eq!(tile_starts(45, 20, 0.5), vec![0, 8, 17, 25]);
        // Step 2.5: 2.5 rounds half to even, to 2.
        assert_eq!(tile_starts(13, 8, 0.5), vec![0, 2, 5]);
    }

    #[test]
    fn gaussian_map_matches_hand_values() {
        let map = gaussian_importance_map([8, 8, 8]);
        // σ = 1, centre 4, radius 4: g(d) = exp(−d²/2).
        let at = |z: usize, y: usize, x: usize| map[(z * 8 + y) * 8 + x];
        assert_eq!(at(4, 4, 4), 1.0);
        assert_eq!(at(4, 4, 5), (-0.5f64).exp() as f32);
        assert_eq!(at(3, 4, 6), ((-0.5f64).exp() * (-2.0f64).exp()) as f32);
        assert_eq!(at(0, 0, 0), ((-8.0f64).exp().powi(3)) as f32);
        assert!(map.iter().all(|value| *value > 0.0 && *value <= 1.0));
    }

    #[test]
    fn gaussian_truncation_reaches_the_patch_edge() {
        // σ = p/8 and radius floor(4σ + 0.5) ≥ p/2: scipy's truncation never cuts inside a patch,
        // so no zero has to be replaced (nnU-Net's replacement step is a no-op for σ = p/8).
        let edge = (-8.0f64).exp();
        let side = (-2.0f64).exp();
        assert_eq!(gaussian_importance_map([1, 1, 4]), vec![edge as f32, side as f32, 1.0, side as f32]);
        assert_eq!(gaussian_importance_map([1, 1, 2]), vec![edge as f32, 1.0]);
        assert!(gaussian_importance_map([5, 7, 9]).iter().all(|value| *value > 0.0));
    }

    #[test]
    fn mirror_combinations_follow_itertools_order() {
        assert!(mirror_combinations(&[]).is_empty());
        assert_eq!(mirror_combinations(&[0, 2]), vec![vec![0], vec![2], vec![0, 2]]);
        assert_eq!(
            mirror_combinations(&[0, 1, 2]),
            vec![vec![0], vec![1], vec![2], vec![0, 1], vec![0, 2], vec![1, 2], vec![0, 1, 2]]
        );
    }

    #[test]
    fn resampled_lengths_round_half_up() {
        assert_eq!(resampled_length(512, 0.8, 1.5), 273);
        assert_eq!(resampled_length(3, 1.0, 2.0), 2);
        assert_eq!(resampled_length(1, 1.0, 10.0), 1);
    }

    #[test]
    fn flipping_twice_is_identity() {
        let data: Vec<f32> = (0..2 * 24).map(|v| v as f32).collect();
        let once = flip(&data, [2, 3, 4], &[0, 2]);
        assert_eq!(once[0], data[(3 * 4) + 3]);
        assert_eq!(flip(&once, [2, 3, 4], &[0, 2]), data);
    }

    /// A pointwise two-class model: channel 1's logit is the input, channel 0's its negation.
    struct PointwiseSign {
        channels: usize,
        patch_len: usize,
        /// Claims an accelerator, so the threaded (overlapped) path runs.
        accelerator: bool,
    }

    impl InferenceEngine for PointwiseSign {
        fn infer(&mut self, input: &[f32], tiles: usize, consume: LogitsConsumer<'_>) -> Result<(), InferenceError> {
            let mut out = Vec::new();
            assert_eq!(input.len(), tiles * self.patch_len);
            for tile in input.chunks_exact(self.patch_len) {
                // Channel 1 wins where the input is positive, channel 0 elsewhere.
                for channel in 0..self.channels {
                    out.extend(tile.iter().map(|v| if channel == 1 { *v } else { -*v }));
                }
            }
            consume(&out)
        }

        fn runs_on_accelerator(&self) -> bool {
            self.accelerator
        }
    }

    #[test]
    fn window_reproduces_a_pointwise_model_on_the_canonical_grid() {
        window_reproduces_a_pointwise_model(false);
        window_reproduces_a_pointwise_model(true);
    }

    fn window_reproduces_a_pointwise_model(accelerator: bool) {
        // A pointwise model on a grid that needs no resampling gives back its own decision at every
        // voxel, whatever the tiling, padding and window shifts: proof the bookkeeping is exact.
        let dims = [7, 5, 23];
        let voxels: Vec<i16> =
            (0..dims.iter().product::<usize>()).map(|i| if (i * 7919) % 13 < 6 { 500 } else { -500 }).collect();
        let ct = Volume::new(dims, iris_shared::volume::Affine::identity(), voxels.clone()).unwrap();
        let settings = WindowSettings {
            spacing_mm: [1.0, 1.0, 1.0],
            patch: [6, 8, 4],
            tile_step: 0.5,
            mirror_axes: vec![0, 1],
            batch_size: 3,
            batch_is_fixed: true,
            channels: 2,
            normalization: CtNormalization { clip_low: -1000.0, clip_high: 1000.0, mean: 0.0, std: 100.0 },
        };
        let mut engine = PointwiseSign { channels: 2, patch_len: 6 * 8 * 4, accelerator };
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let output = run_sliding_window(&ct, &settings, &mut engine, &|done, total| {
            assert!(done <= total);
            seen.store(done, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
        let expected: Vec<u8> = voxels.iter().map(|v| u8::from(*v > 0)).collect();
        assert_eq!(output.labels, expected);
        assert_eq!(output.report.model_grid, [23, 5, 7]);
        // z: 23 in patches of 6 step 3 → 7 starts; y: padded to 8 → 1; x: 7 in 4 step 2 → 3.
        assert_eq!(output.report.tiles, 7 * 3);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 21);
        assert_eq!(output.report.network_runs, 7 * 4);
    }

    #[test]
    fn resampling_to_double_spacing_averages_pairs() {
        // Length 4 → 2: coordinates 0.5 and 2.5, halfway between neighbours.
        let weights = interpolation_weights(4, 2);
        assert_eq!(weights, vec![(0, 1, 0.5), (2, 3, 0.5)]);
        // Upsampling 2 → 4 clamps at the ends.
        assert_eq!(interpolation_weights(2, 4), vec![(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.0)]);
    }

    #[test]
    fn nearest_back_inverts_an_even_downsampling() {
        let model = vec![1, 2, 3, 4];
        // Model grid z=1, y=1, x=4 → canonical x=8: each model voxel covers two.
        assert_eq!(nearest_to_canonical(&model, [1, 1, 4], [8, 1, 1]), vec![1, 1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn logits_of_the_wrong_size_stop_the_window_on_every_path() {
        /// Returns one value too few per batch.
        struct Short {
            accelerator: bool,
        }
        impl InferenceEngine for Short {
            fn infer(&mut self, input: &[f32], _: usize, consume: LogitsConsumer<'_>) -> Result<(), InferenceError> {
                consume(&vec![0.0; input.len() * 2 - 1])
            }
            fn runs_on_accelerator(&self) -> bool {
                self.accelerator
            }
        }
        let ct = Volume::new([8, 4, 4], iris_shared::volume::Affine::identity(), vec![0i16; 128]).unwrap();
        for (accelerator, mirror_axes) in [(false, vec![]), (false, vec![2]), (true, vec![]), (true, vec![0, 1])] {
            let settings = WindowSettings {
                spacing_mm: [1.0, 1.0, 1.0],
                patch: [4, 4, 4],
                tile_step: 0.5,
                mirror_axes: mirror_axes.clone(),
                batch_size: 2,
                batch_is_fixed: false,
                channels: 2,
                normalization: CtNormalization { clip_low: -1.0, clip_high: 1.0, mean: 0.0, std: 1.0 },
            };
            let error = run_sliding_window(&ct, &settings, &mut Short { accelerator }, &|_, _| {}).unwrap_err();
            // x: 8 in patches of 4 step 2 → 3 tiles, run 2 and 1: the first batch fails.
            let expected = InferenceError::OutputSize { tiles: 2, expected: 2 * 2 * 64, got: 2 * 2 * 64 - 1 };
            assert_eq!(error, expected, "accelerator {accelerator}, mirroring {mirror_axes:?}");
        }
    }

    #[test]
    fn an_engine_failure_stops_the_window_with_its_error() {
        struct Failing;
        impl InferenceEngine for Failing {
            fn infer(&mut self, _: &[f32], _: usize, _: LogitsConsumer<'_>) -> Result<(), InferenceError> {
                Err(InferenceError::Runtime("boom".to_owned()))
            }
        }
        let ct = Volume::new([40, 4, 4], iris_shared::volume::Affine::identity(), vec![0i16; 640]).unwrap();
        let settings = WindowSettings {
            spacing_mm: [1.0, 1.0, 1.0],
            patch: [4, 4, 4],
            tile_step: 0.5,
            mirror_axes: vec![],
            batch_size: 1,
            batch_is_fixed: false,
            channels: 2,
            normalization: CtNormalization { clip_low: -1.0, clip_high: 1.0, mean: 0.0, std: 1.0 },
        };
        let error = run_sliding_window(&ct, &settings, &mut Failing, &|_, _| {}).unwrap_err();
        assert_eq!(error, InferenceError::Runtime("boom".to_owned()));
    }
}
