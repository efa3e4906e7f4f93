//! Per-label statistics of a label map (`stats.json`): voxel counts, volumes and the mean and
//! standard deviation of the CT intensity, centroid and bounding box in world millimetres, and
//! whether the label touches the volume's border, for each label of the model's table.

use iris_core::labels::{BoundingBox, LabelStatistics, LabelTable, SegmentationStats};
use iris_volume::volume::Volume;

/// Why statistics could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("label map dimensions {labels:?} differ from the intensity volume's {intensities:?}")]
    GridMismatch { labels: [usize; 3], intensities: [usize; 3] },
}

/// Statistics of every label of `table` in `labels`, with intensities (HU) taken from the voxels of
/// `intensities` on the same grid (precondition: equal dimensions, otherwise
/// [`StatsError::GridMismatch`]; the affines are not compared).
///
/// For each label of the table, in the table's order and including labels with no voxels: the voxel
/// count, the volume (`voxels × labels.voxel_volume_ml()`), and the mean and population standard
/// deviation of the intensities (`None` when the label is empty). Sums are accumulated exactly in
/// integers and converted to `f64` once, so the result does not depend on the voxel order. Voxels
/// whose label is not in the table (including background 0) are not reported.
pub fn compute_statistics(
    labels: &Volume<u8>,
    intensities: &Volume<i16>,
    table: &LabelTable,
) -> Result<SegmentationStats, StatsError> {
    if labels.dims() != intensities.dims() {
        return Err(StatsError::GridMismatch { labels: labels.dims(), intensities: intensities.dims() });
    }
    let mut sums = [IntensitySums::default(); 256];
    let mut extents = [IndexExtent::default(); 256];
    let [nx, ny, _] = labels.dims();
    for (index, (&label, &value)) in labels.voxels().iter().zip(intensities.voxels()).enumerate() {
        sums[usize::from(label)].add(value);
        extents[usize::from(label)].add([index % nx, (index / nx) % ny, index / (nx * ny)]);
    }
    let affine = labels.affine();
    let dims = labels.dims();
    let voxel_volume_ml = labels.voxel_volume_ml();
    let label_statistics = table
        .labels
        .iter()
        .map(|description| {
            // Ids above 255 cannot occur in an 8-bit label map: they are reported empty.
            let slot = u8::try_from(description.id).ok().map(usize::from);
            let sums = slot.map(|id| sums[id]).unwrap_or_default();
            let extent = slot.map(|id| extents[id]).unwrap_or_default();
            LabelStatistics {
                id: description.id,
                name: description.name.clone(),
                color: description.color,
                voxels: sums.count,
                volume_ml: sums.count as f64 * voxel_volume_ml,
                mean_hu: sums.mean(),
                std_hu: sums.population_standard_deviation(),
                centroid_mm: extent.centroid().map(|index| affine.apply(index)),
                bounding_box_mm: extent.world_box(affine),
                touches_border: extent.touches_border(dims),
            }
        })
        .collect();
    Ok(SegmentationStats {
        model: table.model.clone(),
        diagnostic: table.diagnostic,
        dims: labels.dims(),
        voxel_volume_ml,
        labels: label_statistics,
    })
}

/// Voxel index sums and bounds of one label.
#[derive(Debug, Clone, Copy, Default)]
struct IndexExtent {
    count: u64,
    sum: [u64; 3],
    min: [usize; 3],
    max: [usize; 3],
}

impl IndexExtent {
    fn add(&mut self, index: [usize; 3]) {
        if self.count == 0 {
            self.min = index;
            self.max = index;
        }
        self.count += 1;
        for (axis, &at) in index.iter().enumerate() {
            self.sum[axis] += at as u64;
            self.min[axis] = self.min[axis].min(at);
            self.max[axis] = self.max[axis].max(at);
        }
    }

    fn centroid(&self) -> Option<[f64; 3]> {
        (self.count > 0).then(|| self.sum.map(|sum| sum as f64 / self.count as f64))
    }

    /// The world box of the index box's eight corners (exact for axis-aligned grids, the
    /// enclosing box for oblique ones).
    fn world_box(&self, affine: &iris_volume::volume::Affine) -> Option<BoundingBox> {
        if self.count == 0 {
            return None;
        }
        let mut min = [f64::INFINITY; 3];
        let mut max = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let index: [f64; 3] = std::array::from_fn(|axis| {
                (if corner & (1 << axis) == 0 { self.min[axis] } else { self.max[axis] }) as f64
            });
            let world = affine.apply(index);
            for axis in 0..3 {
                min[axis] = min[axis].min(world[axis]);
                max[axis] = max[axis].max(world[axis]);
            }
        }
        Some(BoundingBox { min, max })
    }

    fn touches_border(&self, dims: [usize; 3]) -> bool {
        self.count > 0 && (0..3).any(|axis| self.min[axis] == 0 || self.max[axis] + 1 == dims[axis])
    }
}

/// Exact running sums of the intensities of one label.
#[derive(Debug, Clone, Copy, Default)]
struct IntensitySums {
    count: u64,
    sum: i128,
    sum_of_squares: i128,
}

impl IntensitySums {
    fn add(&mut self, value: i16) {
        let value = i128::from(value);
        self.count += 1;
        self.sum += value;
        self.sum_of_squares += value * value;
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// sqrt((n·Σx² − (Σx)²) / n²), with the numerator computed exactly in integers.
    fn population_standard_deviation(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let count = i128::from(self.count);
        let numerator = (count * self.sum_of_squares - self.sum * self.sum).max(0);
        let variance = numerator as f64 / (self.count as f64 * self.count as f64);
        Some(variance.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iris_core::labels::LabelDescription;
    use iris_volume::volume::Affine;

    fn table() -> LabelTable {
        LabelTable {
            model: "test-model".to_string(),
            diagnostic: false,
            labels: vec![
                LabelDescription { id: 1, name: "one".to_string(), color: [1, 2, 3] },
                LabelDescription { id: 2, name: "two".to_string(), color: [4, 5, 6] },
                LabelDescription { id: 3, name: "empty".to_string(), color: [7, 8, 9] },
                LabelDescription { id: 300, name: "beyond u8".to_string(), color: [0, 0, 0] },
            ],
        }
    }

    /// 2 × 2 × 2 voxels of 2 × 1 × 0.5 mm (1 mm³ = 0.001 ml each).
    fn grid_affine() -> Affine {
        Affine([[2.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.0, 6.0], [0.0, 0.0, 0.5, 7.0], [0.0, 0.0, 0.0, 1.0]])
    }

    #[test]
    fn hand_computed_statistics() {
        let labels = Volume::new([2, 2, 2], grid_affine(), vec![0, 1, 1, 2, 2, 2, 0, 9]).unwrap();
        let intensities = Volume::new([2, 2, 2], grid_affine(), vec![-1000, 10, 20, 1, 2, 3, -1000, 500]).unwrap();
        let stats = compute_statistics(&labels, &intensities, &table()).unwrap();
        assert_eq!(stats.model, "test-model");
        assert!(!stats.diagnostic);
        assert_eq!(stats.dims, [2, 2, 2]);
        assert!((stats.voxel_volume_ml - 0.001).abs() < 1e-15);
        assert_eq!(stats.labels.len(), 4, "every label of the table, empty ones included");

        let one = &stats.labels[0];
        assert_eq!((one.id, one.name.as_str(), one.color), (1, "one", [1, 2, 3]));
        assert_eq!(one.voxels, 2);
        assert!((one.volume_ml - 0.002).abs() < 1e-15);
        assert_eq!(one.mean_hu, Some(15.0));
        assert_eq!(one.std_hu, Some(5.0));

        let two = &stats.labels[1];
        assert_eq!(two.voxels, 3);
        assert_eq!(two.mean_hu, Some(2.0));
        // Population variance of 1, 2, 3 is 2/3.
        assert!((two.std_hu.unwrap() - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);

        for empty in &stats.labels[2..] {
            assert_eq!(empty.voxels, 0);
            assert_eq!(empty.volume_ml, 0.0);
            assert_eq!(empty.mean_hu, None);
            assert_eq!(empty.std_hu, None);
        }
        assert_eq!(stats.labels[3].id, 300);
        // Label 1 is at indices (1,0,0) and (0,1,0): centroid (0.5, 0.5, 0) → world (6, 6.5, 7).
        assert_eq!(one.centroid_mm, Some([6.0, 6.5, 7.0]));
        assert_eq!(one.bounding_box_mm, Some(BoundingBox { min: [5.0, 6.0, 7.0], max: [7.0, 7.0, 7.0] }));
        assert!(one.touches_border);
        assert_eq!(stats.labels[2].centroid_mm, None);
        assert!(!stats.labels[2].touches_border);
    }

    #[test]
    fn an_interior_label_does_not_touch_the_border() {
        let mut voxels = vec![0u8; 27];
        voxels[13] = 1;
        let labels = Volume::new([3, 3, 3], grid_affine(), voxels).unwrap();
        let intensities = Volume::new([3, 3, 3], grid_affine(), vec![0i16; 27]).unwrap();
        let stats = compute_statistics(&labels, &intensities, &table()).unwrap();
        assert!(!stats.labels[0].touches_border);
        assert_eq!(stats.labels[0].centroid_mm, Some([7.0, 7.0, 7.5]));
    }

    #[test]
    fn constant_label_has_zero_deviation_and_extreme_values_do_not_overflow() {
        let n = 27;
        let affine = Affine::identity();
        let labels = Volume::new([3, 3, 3], affine, vec![1u8; n]).unwrap();
        let intensities = Volume::new([3, 3, 3], affine, vec![i16::MIN; n]).unwrap();
        let stats = compute_statistics(&labels, &intensities, &table()).unwrap();
        assert_eq!(stats.labels[0].voxels, 27);
        assert_eq!(stats.labels[0].mean_hu, Some(f64::from(i16::MIN)));
        assert_eq!(stats.labels[0].std_hu, Some(0.0));
        assert!((stats.labels[0].volume_ml - 0.027).abs() < 1e-15);
    }

    #[test]
    fn statistics_round_trip_through_the_label_table() {
        let labels = Volume::new([1, 1, 2], Affine::identity(), vec![1, 2]).unwrap();
        let intensities = Volume::new([1, 1, 2], Affine::identity(), vec![0, 0]).unwrap();
        let stats = compute_statistics(&labels, &intensities, &table()).unwrap();
        assert_eq!(stats.label_table(), table());
    }

    #[test]
    fn mismatched_grids_are_refused() {
        let labels = Volume::new([2, 1, 1], Affine::identity(), vec![1, 1]).unwrap();
        let intensities = Volume::new([1, 2, 1], Affine::identity(), vec![0, 0]).unwrap();
        assert_eq!(
            compute_statistics(&labels, &intensities, &table()),
            Err(StatsError::GridMismatch { labels: [2, 1, 1], intensities: [1, 2, 1] })
        );
    }
}
