//! How the CT goes to the model grid and the labels come back (steps 2 and 9), two ways:
//!
//! - [`Resampling::HalfPixel`], iris's own: the normalised CT resampled trilinearly with voxel
//!   centres aligned (half-pixel), labels back by nearest neighbour, centres aligned.
//! - [`Resampling::TotalSegmentator`], TotalSegmentator's chain around nnU-Net's predictor, so a
//!   TotalSegmentator model sees the array its own CLI would hand it: the CT in Hounsfield units
//!   resampled by `scipy.ndimage.zoom(order=1, mode="nearest")` (TotalSegmentator's
//!   `change_spacing`: corners aligned, shape `round(n · spacing / target)` with ties to even),
//!   truncated to integers (`astype(np.int32)`), then normalised in float32 as nnU-Net's
//!   `CTNormalization` does; labels back by `scipy.ndimage.zoom(order=0)` to the input's shape.
//!   The interpolation repeats scipy's arithmetic (its weights `1 − t` and `1 − (1 − t)`, the
//!   eight corners summed in its order), so the integers are scipy's, bit for bit.

use iris_volume::volume::Volume;
use rayon::prelude::*;

/// Which resampling chain a model was trained and validated behind (`resampling` in its card).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resampling {
    #[default]
    HalfPixel,
    TotalSegmentator,
}

impl Resampling {
    /// The card's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Resampling::HalfPixel => "half_pixel",
            Resampling::TotalSegmentator => "totalsegmentator",
        }
    }

    pub fn parse(text: &str) -> Option<Resampling> {
        [Resampling::HalfPixel, Resampling::TotalSegmentator].into_iter().find(|r| r.as_str() == text)
    }
}

/// `scipy.ndimage.zoom`'s output length for `length` voxels of `spacing` mm zoomed to `target`
/// mm: Python's `round(length · (spacing / target))`, ties to even.
pub fn zoomed_length(length: usize, spacing: f64, target: f64) -> usize {
    ((length as f64 * (spacing / target)).round_ties_even() as usize).max(1)
}

/// scipy's source coordinate of output index `o` with corners aligned (`grid_mode=False`).
fn corner_aligned(input: usize, output: usize) -> impl Fn(usize) -> f64 {
    let zoom = if output > 1 { (input - 1) as f64 / (output - 1) as f64 } else { 1.0 };
    move |o| o as f64 * zoom
}

/// Per output index: the lower source index, the upper one (clamped: `mode="nearest"`) and
/// scipy's two order-1 spline weights.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f64, f64)> {
    let coordinate = corner_aligned(input, output);
    (0..output)
        .map(|o| {
            let c = coordinate(o);
            let low = c.floor();
            let w0 = 1.0 - (c - low);
            let w1 = 1.0 - w0;
            let i0 = (low as usize).min(input - 1);
            (i0, (i0 + 1).min(input - 1), w0, w1)
        })
        .collect()
}

/// `scipy.ndimage.zoom(hu, zoom, order=1, mode="nearest").astype(np.int32)` onto a grid of
/// `model` (z, y, x) voxels, returned z, y, x with x fastest. `hu` is canonical (x fastest).
pub fn zoom_hounsfield_like_totalsegmentator(ct: &Volume<i16>, model: [usize; 3]) -> Vec<i32> {
    let [nx, ny, nz] = ct.dims();
    let [mz, my, mx] = model;
    let (tx, ty, tz) = (linear_taps(nx, mx), linear_taps(ny, my), linear_taps(nz, mz));
    let hu = ct.voxels();
    let at = |x: usize, y: usize, z: usize| f64::from(hu[(z * ny + y) * nx + x]);
    let mut out = vec![0i32; mz * my * mx];
    out.par_chunks_mut(my * mx).enumerate().for_each(|(z, slice)| {
        let (z0, z1, wz0, wz1) = tz[z];
        for (y, row) in slice.chunks_mut(mx).enumerate() {
            let (y0, y1, wy0, wy1) = ty[y];
            for (x, value) in row.iter_mut().enumerate() {
                let (x0, x1, wx0, wx1) = tx[x];
                // scipy's loop: the array's first axis (x) outermost, each corner's value
                // multiplied by the weights of axes x, y, z in turn, summed from 0.0.
                let mut sum = 0.0f64;
                for (xi, wx) in [(x0, wx0), (x1, wx1)] {
                    for (yi, wy) in [(y0, wy0), (y1, wy1)] {
                        for (zi, wz) in [(z0, wz0), (z1, wz1)] {
                            sum += at(xi, yi, zi) * wx * wy * wz;
                        }
                    }
                }
                *value = sum as i32;
            }
        }
    });
    out
}

/// `scipy.ndimage.zoom(labels, order=0)` from the model grid (z, y, x) to the canonical grid
/// (x, y, z dims; x fastest): nearest source, corners aligned, halves rounded up.
pub fn zoom_labels_like_totalsegmentator(model_labels: &[u8], model: [usize; 3], canonical: [usize; 3]) -> Vec<u8> {
    let [mz, my, mx] = model;
    let [nx, ny, nz] = canonical;
    let nearest = |input: usize, output: usize| -> Vec<usize> {
        let coordinate = corner_aligned(input, output);
        (0..output).map(|o| ((coordinate(o) + 0.5).floor() as usize).min(input - 1)).collect()
    };
    let (sx, sy, sz) = (nearest(mx, nx), nearest(my, ny), nearest(mz, nz));
    let mut labels = Vec::with_capacity(nx * ny * nz);
    for &z in &sz {
        for &y in &sy {
            let row = &model_labels[(z * my + y) * mx..][..mx];
            labels.extend(sx.iter().map(|&x| row[x]));
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use iris_volume::volume::Affine;

    #[test]
    fn the_card_spellings_round_trip() {
        for resampling in [Resampling::HalfPixel, Resampling::TotalSegmentator] {
            assert_eq!(Resampling::parse(resampling.as_str()), Some(resampling));
        }
        assert_eq!(Resampling::parse("cubic"), None);
    }

    #[test]
    fn zoomed_lengths_round_ties_to_even_as_python_does() {
        assert_eq!(zoomed_length(5, 1.5, 3.0), 2, "2.5 rounds to 2");
        assert_eq!(zoomed_length(7, 1.5, 3.0), 4, "3.5 rounds to 4");
        assert_eq!(zoomed_length(512, 0.8, 1.5), 273);
        assert_eq!(zoomed_length(1, 1.0, 10.0), 1);
    }

    #[test]
    fn corners_align_and_interior_points_interpolate() {
        // 1-D along x: 4 values zoomed to 7 points sample at 0, 0.5, 1, …, 3.
        let ct = Volume::new([4, 1, 1], Affine::identity(), vec![0i16, 10, 20, -30]).unwrap();
        let zoomed = zoom_hounsfield_like_totalsegmentator(&ct, [1, 1, 7]);
        assert_eq!(zoomed, vec![0, 5, 10, 15, 20, -5, -30], "truncation toward zero, as astype does");
    }

    #[test]
    fn equal_grids_give_the_input_back() {
        let values: Vec<i16> = (0..60).map(|v| v * 37 - 1024).collect();
        let ct = Volume::new([5, 4, 3], Affine::identity(), values.clone()).unwrap();
        let zoomed = zoom_hounsfield_like_totalsegmentator(&ct, [3, 4, 5]);
        assert_eq!(zoomed, values.iter().map(|&v| i32::from(v)).collect::<Vec<_>>());
        let labels: Vec<u8> = (0..60).map(|v| v as u8).collect();
        assert_eq!(zoom_labels_like_totalsegmentator(&labels, [3, 4, 5], [5, 4, 3]), labels);
    }

    #[test]
    fn labels_come_back_by_the_nearest_corner_aligned_source() {
        // 3 model voxels to 5: sources at 0, 0.5, 1, 1.5, 2 → 0, 1 (half up), 1, 2, 2.
        assert_eq!(zoom_labels_like_totalsegmentator(&[7, 8, 9], [1, 1, 3], [5, 1, 1]), vec![7, 8, 8, 9, 9]);
    }
}
