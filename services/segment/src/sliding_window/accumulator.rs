//! Step 7: Gaussian-weighted accumulation of the tiles' logits and the argmax, over a window of
//! the patch's depth along Z; step 9: the labels back on the canonical grid.

use rayon::prelude::*;

/// Gaussian-weighted logit sums over a window of `patch[0]` z slices of the padded grid.
///
/// Tiles arrive in z-start order. When a tile starts further along z than the window's origin,
/// no later tile can touch the slices before that start, so they are reduced to labels (first
/// maximum wins) and the window moves on: memory is `channels × patch_z × Y × X` floats.
pub(super) struct Accumulator {
    channels: usize,
    dims: [usize; 3],
    patch: [usize; 3],
    origin_z: usize,
    /// `[channel][window z][y][x]`.
    sums: Vec<f32>,
    labels: Vec<u8>,
}

impl Accumulator {
    pub(super) fn new(channels: usize, dims: [usize; 3], patch: [usize; 3]) -> Accumulator {
        let slice = dims[1] * dims[2];
        Accumulator {
            channels,
            dims,
            patch,
            origin_z: 0,
            sums: iris_volume::memory::large_zeroed_vec(channels * patch[0] * slice),
            labels: vec![0; dims.iter().product()],
        }
    }

    fn slice_len(&self) -> usize {
        self.dims[1] * self.dims[2]
    }

    fn channel_len(&self) -> usize {
        self.patch[0] * self.slice_len()
    }

    pub(super) fn add_tile(&mut self, start: [usize; 3], logits: &[f32], gaussian: &[f32]) {
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

    pub(super) fn finish(mut self) -> Vec<u8> {
        for window_z in 0..self.patch[0] {
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
