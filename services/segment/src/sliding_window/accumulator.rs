//! Step 7: Gaussian-weighted accumulation of the tiles' logits and the argmax, over a window of
//! the patch's depth along Z; step 9: the labels back on the canonical grid.

use rayon::prelude::*;

use super::plan::PaddedGrid;

/// Gaussian-weighted logit sums over a window of the model grid: `min(patch_z, Z)` slices deep,
/// and only the model grid's own voxels (nnU-Net's padding up to the patch is never summed: its
/// sums would be cropped away), so a scan thinner than the patch along an axis costs its own size.
///
/// Tiles arrive in z-start order. When a tile's first slice inside the model grid is further along
/// z than the window's origin, no later tile can touch the slices before it, so they are reduced
/// to labels (first maximum wins) and the window moves on: memory is
/// `channels × min(patch_z, Z) × Y × X` floats of the model grid.
pub(super) struct Accumulator {
    channels: usize,
    /// The model grid (z, y, x), the part of the padded grid that is kept.
    region: [usize; 3],
    /// Where the model grid starts in the padded grid.
    before: [usize; 3],
    patch: [usize; 3],
    /// Slices in the window.
    depth: usize,
    /// The window's first slice, in model-grid z.
    origin_z: usize,
    /// `[channel][window z][y][x]`.
    sums: Vec<f32>,
    labels: Vec<u8>,
}

impl Accumulator {
    pub(super) fn new(channels: usize, grid: &PaddedGrid, patch: [usize; 3]) -> Accumulator {
        let region = grid.model;
        let depth = patch[0].min(region[0]);
        Accumulator {
            channels,
            region,
            before: grid.before,
            patch,
            depth,
            origin_z: 0,
            sums: iris_volume::memory::large_zeroed_vec(channels * depth * region[1] * region[2]),
            labels: vec![0; region.iter().product()],
        }
    }

    fn slice_len(&self) -> usize {
        self.region[1] * self.region[2]
    }

    fn channel_len(&self) -> usize {
        self.depth * self.slice_len()
    }

    /// Adds the tile at `start` (padded-grid coordinates) where it overlaps the model grid.
    pub(super) fn add_tile(&mut self, start: [usize; 3], logits: &[f32], gaussian: &[f32]) {
        let (before, region, patch) = (self.before, self.region, self.patch);
        // The tile's extent inside the model grid, per axis, in padded-grid coordinates.
        let span = |a: usize| (start[a].max(before[a]), (start[a] + patch[a]).min(before[a] + region[a]));
        let ((z0, z1), (y0, y1), (x0, x1)) = (span(0), span(1), span(2));
        if z0 >= z1 || y0 >= y1 || x0 >= x1 {
            return;
        }
        if z0 - before[0] > self.origin_z {
            self.advance_to(z0 - before[0]);
        }
        let [_, py, px] = patch;
        let [_, ry, rx] = region;
        let (channel_len, patch_len, width) = (self.channel_len(), patch.iter().product::<usize>(), x1 - x0);
        let origin_z = self.origin_z;
        // Channels are independent and each voxel's sum is updated by exactly one thread, in tile
        // order, so the parallel result is bit-identical to the serial one.
        self.sums.par_chunks_mut(channel_len).zip(logits.par_chunks(patch_len)).for_each(|(sums, tile)| {
            for z in z0..z1 {
                let window_z = z - before[0] - origin_z;
                for y in y0..y1 {
                    let at = (window_z * ry + y - before[1]) * rx + x0 - before[2];
                    let from = ((z - start[0]) * py + y - start[1]) * px + x0 - start[2];
                    let row = &mut sums[at..at + width];
                    for ((sum, logit), weight) in
                        row.iter_mut().zip(&tile[from..from + width]).zip(&gaussian[from..from + width])
                    {
                        *sum += logit * weight;
                    }
                }
            }
        });
    }

    /// Finalises slices `[origin_z, new_origin)` and shifts the window to start at `new_origin`.
    fn advance_to(&mut self, new_origin: usize) {
        let depth = self.depth;
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
        if z >= self.region[0] {
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

    /// The model grid's labels (z, y, x; x fastest).
    pub(super) fn finish(mut self) -> Vec<u8> {
        for window_z in 0..self.depth {
            self.finalise_slice(window_z);
        }
        self.labels
    }
}

/// Step 9: model-grid labels (z, y, x; x fastest) to the canonical grid by nearest neighbour.
pub(super) fn nearest_to_canonical(model_labels: &[u8], model: [usize; 3], canonical: [usize; 3]) -> Vec<u8> {
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
