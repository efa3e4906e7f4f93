//! Steps 1–5 of the sliding window: the model grid, the normalised and resampled volume padded to
//! at least one patch, the tiles and their batches, the Gaussian importance map, the mirror
//! combinations. One plan, whichever strategy runs it.

use iris_volume::volume::Volume;
use rayon::prelude::*;

use super::WindowSettings;
use super::resampling::{Resampling, zoom_hounsfield_like_totalsegmentator, zoomed_length};

/// Everything the strategies share for one model on one volume.
pub(super) struct TilePlan {
    pub(super) padded: PaddedGrid,
    /// The padded model-grid volume (z, y, x; x fastest), normalised.
    pub(super) volume: Vec<f32>,
    /// Tile starts, z-start order.
    pub(super) tiles: Vec<[usize; 3]>,
    pub(super) gaussian: Vec<f32>,
    pub(super) combinations: Vec<Vec<usize>>,
    pub(super) batch_size: usize,
    /// Logits per tile: channels × patch voxels.
    pub(super) logits_per_tile: usize,
}

impl TilePlan {
    pub(super) fn new(ct: &Volume<i16>, settings: &WindowSettings) -> TilePlan {
        let canonical = ct.dims();
        let spacing = ct.spacing();
        let input_zyx = [canonical[2], canonical[1], canonical[0]];
        let spacing_zyx = [spacing[2], spacing[1], spacing[0]];
        let padded;
        let volume = match settings.resampling {
            Resampling::HalfPixel => {
                let model_grid: [usize; 3] =
                    std::array::from_fn(|a| resampled_length(input_zyx[a], spacing_zyx[a], settings.spacing_mm[a]));
                padded = PaddedGrid::new(model_grid, settings.patch);
                normalise_resample_and_pad(ct, settings, &padded)
            }
            Resampling::TotalSegmentator => {
                let model_grid: [usize; 3] =
                    std::array::from_fn(|a| zoomed_length(input_zyx[a], spacing_zyx[a], settings.spacing_mm[a]));
                padded = PaddedGrid::new(model_grid, settings.patch);
                zoom_normalise_and_pad(ct, settings, &padded)
            }
        };
        let starts: [Vec<usize>; 3] =
            std::array::from_fn(|a| tile_starts(padded.dims[a], settings.patch[a], settings.tile_step));
        let patch_len: usize = settings.patch.iter().product();
        TilePlan {
            padded,
            volume,
            tiles: tile_grid(&starts),
            gaussian: gaussian_importance_map(settings.patch),
            combinations: mirror_combinations(&settings.mirror_axes),
            batch_size: settings.batch_size.max(1),
            logits_per_tile: settings.channels * patch_len,
        }
    }

    /// The tiles, a batch at a time.
    pub(super) fn batches(&self) -> std::slice::Chunks<'_, [usize; 3]> {
        self.tiles.chunks(self.batch_size)
    }

    /// The network input of `batch` (`[tiles, 1, pz, py, px]`).
    pub(super) fn cut(&self, batch: &[[usize; 3]], settings: &WindowSettings) -> Vec<f32> {
        cut_batch(&self.volume, self.padded.dims, settings.patch, batch, self.batch_size, settings.batch_is_fixed)
    }

    /// Tiles the network runs on for `batch`: a fixed batch is always full.
    pub(super) fn runs_in(&self, batch: &[[usize; 3]], settings: &WindowSettings) -> usize {
        if settings.batch_is_fixed { self.batch_size } else { batch.len() }
    }

    /// Network runs per batch: the plain one and one per mirror combination.
    pub(super) fn runs_per_batch(&self) -> usize {
        self.combinations.len() + 1
    }
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

/// nnU-Net's `value_scaling_factor`: the map's maximum, before it is rounded to half precision.
pub const GAUSSIAN_SCALE: f64 = 10.0;

/// The Gaussian importance map of a patch (z, y, x order, x fastest), exactly as nnU-Net v2's
/// `compute_gaussian(patch, sigma_scale=1/8, value_scaling_factor=10)` makes it: σ = patch / 8,
/// scaled to a maximum of 10 at the centre, rounded to float16 (its default dtype; far corners of
/// large patches underflow to 0), zeros replaced by the smallest non-zero value.
pub fn gaussian_importance_map(patch: [usize; 3]) -> Vec<f32> {
    let axis: [Vec<f64>; 3] = std::array::from_fn(|a| gaussian_axis(patch[a]));
    let mut map = Vec::with_capacity(patch.iter().product());
    for z in 0..patch[0] {
        for y in 0..patch[1] {
            let zy = axis[0][z] * axis[1][y];
            map.extend(axis[2].iter().map(|x| half::f16::from_f64(zy * x * GAUSSIAN_SCALE).to_f32()));
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
pub(super) struct PaddedGrid {
    pub(super) model: [usize; 3],
    pub(super) dims: [usize; 3],
    pub(super) before: [usize; 3],
}

impl PaddedGrid {
    fn new(model: [usize; 3], patch: [usize; 3]) -> PaddedGrid {
        let dims = std::array::from_fn(|a| model[a].max(patch[a]));
        let before = std::array::from_fn(|a| (dims[a] - model[a]) / 2);
        PaddedGrid { model, dims, before }
    }

    /// The model grid's values out of the padded grid's.
    pub(super) fn crop<T: Copy>(&self, padded: &[T]) -> Vec<T> {
        let [_, py, px] = self.dims;
        let [mz, my, mx] = self.model;
        let mut out = Vec::with_capacity(mz * my * mx);
        for z in 0..mz {
            for y in 0..my {
                let start = ((z + self.before[0]) * py + y + self.before[1]) * px + self.before[2];
                out.extend_from_slice(&padded[start..start + mx]);
            }
        }
        debug_assert_eq!(out.len(), mz * my * mx);
        out
    }
}

/// Per-axis linear interpolation weights: output index → (i0, i1, w).
pub(super) fn interpolation_weights(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
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
    let mut volume: Vec<f32> = iris_volume::memory::large_zeroed_vec(padded.dims.iter().product());
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

/// Steps 1–3 as TotalSegmentator and nnU-Net do them: the CT zoomed in Hounsfield units and
/// truncated to integers (TotalSegmentator's `change_spacing`), then, in float32, clipped, shifted
/// and scaled (nnU-Net's `CTNormalization`: `np.clip(image, low, high)`, `image -= mean`,
/// `image /= std`, each operand rounded to float32), placed in the zero-padded model grid.
fn zoom_normalise_and_pad(ct: &Volume<i16>, settings: &WindowSettings, padded: &PaddedGrid) -> Vec<f32> {
    let [mz, my, mx] = padded.model;
    let [_, py, px] = padded.dims;
    let zoomed = zoom_hounsfield_like_totalsegmentator(ct, padded.model);
    let norm = settings.normalization;
    let (low, high, mean, std) = (norm.clip_low as f32, norm.clip_high as f32, norm.mean as f32, norm.std as f32);
    let mut volume: Vec<f32> = iris_volume::memory::large_zeroed_vec(padded.dims.iter().product());
    volume.par_chunks_mut(py * px).skip(padded.before[0]).take(mz).zip(zoomed.par_chunks(my * mx)).for_each(
        |(slice, source)| {
            for (y, source_row) in source.chunks(mx).enumerate() {
                let row = &mut slice[(y + padded.before[1]) * px + padded.before[2]..][..mx];
                for (out, &hu) in row.iter_mut().zip(source_row) {
                    *out = ((hu as f32).clamp(low, high) - mean) / std;
                }
            }
        },
    );
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
