//! Each label's voxel count and bounding box, from one pass over the label map.

use iris_volume::volume::Volume;
use rayon::prelude::*;

use super::end_of_run;

/// Inclusive voxel-index bounding box of one label.
#[derive(Debug, Clone, Copy)]
pub(super) struct VoxelBounds {
    pub(super) lowest: [usize; 3],
    pub(super) highest: [usize; 3],
}

impl VoxelBounds {
    /// Number of voxels in the box.
    pub(super) fn voxel_count(&self) -> usize {
        (0..3).map(|axis| self.highest[axis] - self.lowest[axis] + 1).product()
    }
}

/// Voxel count and inclusive bounding box of every label value, from one pass over a label map.
pub(super) struct LabelCensus {
    pub(super) voxels: [u64; 256],
    pub(super) lowest: [[usize; 3]; 256],
    pub(super) highest: [[usize; 3]; 256],
}

impl LabelCensus {
    fn empty() -> Self {
        LabelCensus { voxels: [0; 256], lowest: [[usize::MAX; 3]; 256], highest: [[0; 3]; 256] }
    }

    /// Counts a label map, slice by slice in parallel (the result does not depend on the order).
    pub(super) fn of(labels: &Volume<u8>) -> Self {
        let [nx, ny, _] = labels.dims();
        labels
            .voxels()
            .par_chunks(nx * ny)
            .enumerate()
            .fold(LabelCensus::empty, |mut census, (k, slice)| {
                census.count_slice(slice, nx, k);
                census
            })
            .reduce(LabelCensus::empty, LabelCensus::merged)
    }

    fn count_slice(&mut self, slice: &[u8], nx: usize, k: usize) {
        for (j, row) in slice.chunks_exact(nx).enumerate() {
            let mut start = 0;
            // Runs of one value: one update per run.
            while start < row.len() {
                let value = row[start];
                let end = end_of_run(row, start, value);
                let value = usize::from(value);
                self.voxels[value] += (end - start) as u64;
                let (lowest, highest) = (&mut self.lowest[value], &mut self.highest[value]);
                lowest[0] = lowest[0].min(start);
                lowest[1] = lowest[1].min(j);
                lowest[2] = lowest[2].min(k);
                highest[0] = highest[0].max(end - 1);
                highest[1] = highest[1].max(j);
                highest[2] = highest[2].max(k);
                start = end;
            }
        }
    }

    fn merged(mut self, other: LabelCensus) -> LabelCensus {
        for value in 0..256 {
            self.voxels[value] += other.voxels[value];
            for axis in 0..3 {
                self.lowest[value][axis] = self.lowest[value][axis].min(other.lowest[value][axis]);
                self.highest[value][axis] = self.highest[value][axis].max(other.highest[value][axis]);
            }
        }
        self
    }
}
