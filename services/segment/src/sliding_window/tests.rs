//! Tests of the sliding window: tile placement, the Gaussian map, mirroring, accumulation, both
//! strategies against each other and against wrong-sized logits.

use super::mirroring::flip;
use super::plan::interpolation_weights;
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
    // σ = 1, centre 4, radius 4: g(d) = 10 · exp(−d²/2), rounded to float16.
    let half = |value: f64| half::f16::from_f64(10.0 * value).to_f32();
    let at = |z: usize, y: usize, x: usize| map[(z * 8 + y) * 8 + x];
    assert_eq!(at(4, 4, 4), 10.0);
    assert_eq!(at(4, 4, 5), half((-0.5f64).exp()));
    assert_eq!(at(3, 4, 6), half((-0.5f64).exp() * (-2.0f64).exp()));
    // 10 · e^−24 is under float16's smallest subnormal (2^−24): 0, replaced by the smallest value.
    let smallest = map.iter().copied().filter(|value| *value > 0.0).fold(f32::INFINITY, f32::min);
    assert_eq!(at(0, 0, 0), smallest);
    assert!(map.iter().all(|value| *value > 0.0 && *value <= 10.0));
}

#[test]
fn gaussian_truncation_reaches_the_patch_edge() {
    // σ = p/8 and radius floor(4σ + 0.5) ≥ p/2: scipy's truncation never cuts inside a patch,
    // so only float16 underflow can make a zero.
    let half = |value: f64| half::f16::from_f64(10.0 * value).to_f32();
    let edge = half((-8.0f64).exp());
    let side = half((-2.0f64).exp());
    assert_eq!(gaussian_importance_map([1, 1, 4]), vec![edge, side, 10.0, side]);
    assert_eq!(gaussian_importance_map([1, 1, 2]), vec![edge, 10.0]);
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
    let ct = Volume::new(dims, iris_volume::volume::Affine::identity(), voxels.clone()).unwrap();
    let settings = WindowSettings {
        spacing_mm: [1.0, 1.0, 1.0],
        patch: [6, 8, 4],
        tile_step: 0.5,
        mirror_axes: vec![0, 1],
        batch_size: 3,
        batch_is_fixed: true,
        channels: 2,
        normalization: CtNormalization { clip_low: -1000.0, clip_high: 1000.0, mean: 0.0, std: 100.0 },
        resampling: Resampling::HalfPixel,
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
fn the_logits_of_a_pointwise_model_are_its_own_output_at_every_voxel() {
    // The weighted mean of a pointwise model's logits over every tile covering a voxel is the
    // model's output for that voxel: the normalised input, +x for channel 1 and −x for channel 0.
    let dims = [7, 5, 23];
    let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|i| ((i * 7919) % 1500) as i16 - 750).collect();
    let ct = Volume::new(dims, iris_volume::volume::Affine::identity(), voxels.clone()).unwrap();
    let settings = WindowSettings {
        spacing_mm: [1.0, 1.0, 1.0],
        patch: [6, 8, 4],
        tile_step: 0.5,
        mirror_axes: vec![2],
        batch_size: 2,
        batch_is_fixed: false,
        channels: 2,
        normalization: CtNormalization { clip_low: -1000.0, clip_high: 1000.0, mean: 0.0, std: 100.0 },
        resampling: Resampling::HalfPixel,
    };
    let mut engine = PointwiseSign { channels: 2, patch_len: 6 * 8 * 4, accelerator: false };
    let logits = run_sliding_window_logits(&ct, &settings, &mut engine).unwrap();
    assert_eq!((logits.channels, logits.grid), (2, [23, 5, 7]));
    let voxel_count = voxels.len();
    for (index, hu) in voxels.iter().enumerate() {
        let expected = f32::from(*hu) / 100.0;
        let [positive, negative] = [logits.values[voxel_count + index], logits.values[index]];
        assert!((positive - expected).abs() < 1e-4, "voxel {index}: {positive} for {expected}");
        assert!((negative + expected).abs() < 1e-4, "voxel {index}: {negative} for {}", -expected);
    }
    // The labelling path's argmax is the argmax of these means.
    let labels = run_sliding_window(&ct, &settings, &mut engine, &|_, _| {}).unwrap().labels;
    let argmax: Vec<u8> =
        (0..voxel_count).map(|i| u8::from(logits.values[voxel_count + i] > logits.values[i])).collect();
    assert_eq!(labels, argmax);
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
    let ct = Volume::new([8, 4, 4], iris_volume::volume::Affine::identity(), vec![0i16; 128]).unwrap();
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
            resampling: Resampling::HalfPixel,
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
    let ct = Volume::new([40, 4, 4], iris_volume::volume::Affine::identity(), vec![0i16; 640]).unwrap();
    let settings = WindowSettings {
        spacing_mm: [1.0, 1.0, 1.0],
        patch: [4, 4, 4],
        tile_step: 0.5,
        mirror_axes: vec![],
        batch_size: 1,
        batch_is_fixed: false,
        channels: 2,
        normalization: CtNormalization { clip_low: -1.0, clip_high: 1.0, mean: 0.0, std: 1.0 },
        resampling: Resampling::HalfPixel,
    };
    let error = run_sliding_window(&ct, &settings, &mut Failing, &|_, _| {}).unwrap_err();
    assert_eq!(error, InferenceError::Runtime("boom".to_owned()));
}

/// A three-class model whose logits depend on where a voxel sits in its tile, so overlapping
/// tiles disagree and the Gaussian-weighted sums decide: any slip in the accumulator's
/// bookkeeping (its window, the cut padding) changes labels.
struct TilePositionDependent {
    patch: [usize; 3],
    accelerator: bool,
}

impl InferenceEngine for TilePositionDependent {
    fn infer(&mut self, input: &[f32], tiles: usize, consume: LogitsConsumer<'_>) -> Result<(), InferenceError> {
        let patch_len: usize = self.patch.iter().product();
        assert_eq!(input.len(), tiles * patch_len);
        let mut out = Vec::with_capacity(tiles * 3 * patch_len);
        for tile in input.chunks_exact(patch_len) {
            for channel in 0..3 {
                out.extend(tile.iter().enumerate().map(|(index, value)| {
                    let (z, y, x) = (
                        index / (self.patch[1] * self.patch[2]),
                        index / self.patch[2] % self.patch[1],
                        index % self.patch[2],
                    );
                    (value * (channel as f32 - 1.0) + ((z * 3 + y * 5 + x * 7 + channel * 11) % 13) as f32 * 0.37).sin()
                }));
            }
        }
        consume(&out)
    }

    fn runs_on_accelerator(&self) -> bool {
        self.accelerator
    }
}

#[test]
fn a_grid_thinner_than_the_patch_is_summed_without_its_padding() {
    // Model grid (z, y, x) = (3, 5, 9) under patch (6, 8, 4): z and y are padded, x is tiled.
    // The labels (accumulated over the model grid only) equal the argmax of the logits path's
    // means (accumulated over the whole padded grid, then cropped), on both strategies.
    let dims = [9, 5, 3];
    let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|i| ((i * 7919) % 1500) as i16 - 750).collect();
    let ct = Volume::new(dims, iris_volume::volume::Affine::identity(), voxels).unwrap();
    let settings = WindowSettings {
        spacing_mm: [1.0, 1.0, 1.0],
        patch: [6, 8, 4],
        tile_step: 0.5,
        mirror_axes: vec![],
        batch_size: 2,
        batch_is_fixed: false,
        channels: 3,
        normalization: CtNormalization { clip_low: -1000.0, clip_high: 1000.0, mean: 0.0, std: 100.0 },
        resampling: Resampling::HalfPixel,
    };
    let logits = run_sliding_window_logits(
        &ct,
        &settings,
        &mut TilePositionDependent { patch: settings.patch, accelerator: false },
    )
    .unwrap();
    assert_eq!(logits.grid, [3, 5, 9]);
    let count = logits.values.len() / 3;
    let argmax: Vec<u8> = (0..count)
        .map(|v| {
            (0..3).fold(
                0,
                |best, c| if logits.values[c * count + v] > logits.values[best * count + v] { c } else { best },
            ) as u8
        })
        .collect();
    let classes: std::collections::BTreeSet<u8> = argmax.iter().copied().collect();
    assert_eq!(classes.len(), 3, "every class wins somewhere: the check is not trivial");
    for accelerator in [false, true] {
        let mut engine = TilePositionDependent { patch: settings.patch, accelerator };
        let output = run_sliding_window(&ct, &settings, &mut engine, &|_, _| {}).unwrap();
        assert_eq!(output.report.tiles, 4, "x: 9 in patches of 4, step 2: ceil(5 / 2) + 1 starts");
        assert_eq!(output.labels, argmax, "accelerator {accelerator}");
    }
}
