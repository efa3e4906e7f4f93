//! Smoothing of the boundary corners shared by all labels: a windowed-sinc low-pass filter
//! (Taubin, Zhang and Golub, "Optimal surface smoothing as filter design", 1996; the filter of
//! VTK's `vtkWindowedSincPolyDataFilter` and of 3D Slicer's surface smoothing), then a clamp
//! that keeps every corner within half a voxel of where it started on each axis.
//!
//! The filter is a Chebyshev polynomial of the umbrella operator (each node towards the mean of
//! its stencil, see [`CornerGraph`]) with Hamming-windowed sinc coefficients: low frequencies
//! (the shape) pass, the staircase of the voxel faces does not, and unlike Laplacian smoothing
//! it does not shrink the surface. Because the umbrella weights do not depend on positions, the
//! filter commutes with affine maps: smoothing in voxel coordinates equals smoothing in world
//! millimetres. All labels are smoothed together, so surfaces that touch stay together.
//!
//! The clamp makes this surface nets: each vertex stays inside the voxel-sized cell around its
//! grid corner, and so within half a voxel diagonal of the label boundary it came from.

use iris_volume::memory::large_vec_with_capacity;
use rayon::prelude::*;

use crate::surface::CornerGraph;

/// How strongly to smooth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothingSettings {
    /// 0 (none) to 1 (strongest); 3D Slicer's "smoothing factor", whose default is 0.5. The pass
    /// band is 10^(−4 × factor), as in Slicer.
    pub factor: f64,
    /// Filter order (iterations of the umbrella operator); Slicer uses 20.
    pub iterations: usize,
    /// How far a corner may move on each axis, in voxels (0.5: within its surface-nets cell).
    pub max_offset_voxels: f32,
}

/// Smoothing comparable to 3D Slicer's default (factor 0.5, 20 iterations), kept within each
/// corner's cell.
pub const DEFAULT_SMOOTHING: SmoothingSettings =
    SmoothingSettings { factor: 0.5, iterations: 20, max_offset_voxels: 0.5 };

/// The position of every node of `graph` in voxel coordinates after smoothing (unsmoothed when
/// `settings.factor` is 0 or `settings.iterations` is 0: each corner at its grid position).
pub fn smooth_corners(graph: &CornerGraph, settings: &SmoothingSettings) -> Vec<[f32; 3]> {
    // Three arrays of every node's position (on huge pages, which spare most of their page
    // faults); each node's start is its corner, recomputed where needed rather than kept.
    let n = graph.node_count();
    let start = |node: usize| graph.corner(node as u32).map(|c| c as f32 - 0.5);
    let mut older: Vec<[f32; 3]> = large_vec_with_capacity(n);
    older.par_extend((0..n).into_par_iter().map(start));
    if settings.factor <= 0.0 || settings.iterations == 0 {
        return older;
    }
    let coefficients = windowed_sinc_coefficients(pass_band(settings.factor), settings.iterations);

    // Chebyshev recurrence on the operator A = I − K/2 (K x = x − mean of the stencil):
    // x⁽⁰⁾ = x, x⁽¹⁾ = A x⁽⁰⁾, x⁽ʲ⁾ = 2A x⁽ʲ⁻¹⁾ − x⁽ʲ⁻²⁾; result = Σ cⱼ x⁽ʲ⁾. x⁽ʲ⁾ overwrites
    // x⁽ʲ⁻²⁾ in place, since each node's new value reads only its own old one.
    let mut newer: Vec<[f32; 3]> = large_vec_with_capacity(n);
    newer.par_extend((0..n).into_par_iter().map(|node| half_step(graph, &older, node)));
    let mut result: Vec<[f32; 3]> = large_vec_with_capacity(n);
    result.par_extend((0..n).into_par_iter().map(|node| {
        let (x0, x1) = (older[node], newer[node]);
        std::array::from_fn(|axis| {
            (coefficients[0] * f64::from(x0[axis]) + coefficients[1] * f64::from(x1[axis])) as f32
        })
    }));
    for &coefficient in &coefficients[2..] {
        older.par_iter_mut().zip(result.par_iter_mut()).enumerate().for_each(|(node, (x0, sum))| {
            let x1 = newer[node];
            let mean = stencil_mean(graph, &newer, node).unwrap_or(x1);
            for axis in 0..3 {
                // 2A x1 − x0 = 2 x1 − (x1 − mean) − x0.
                let x2 = x1[axis] + mean[axis] - x0[axis];
                x0[axis] = x2;
                sum[axis] += (coefficient * f64::from(x2)) as f32;
            }
        });
        std::mem::swap(&mut older, &mut newer);
    }

    // Fixed nodes stay put; every node stays within its cell.
    let limit = settings.max_offset_voxels;
    result.par_iter_mut().enumerate().for_each(|(node, position)| {
        let start = start(node);
        if graph.stencil(node).is_empty() {
            *position = start;
            return;
        }
        for axis in 0..3 {
            let value = if position[axis].is_finite() { position[axis] } else { start[axis] };
            position[axis] = value.clamp(start[axis] - limit, start[axis] + limit);
        }
    });
    result
}

/// The pass band of 3D Slicer's smoothing factor: 10^(−4 × factor).
pub fn pass_band(factor: f64) -> f64 {
    10f64.powf(-4.0 * factor.clamp(0.0, 1.0))
}

/// The Chebyshev coefficients c₀..c_N of the windowed-sinc filter with pass band `pass_band`
/// (in (0, 2)) and order `order`, shifted so the filter is 1 at the pass band (Newton's method
/// on the offset, as in Taubin et al. and VTK).
pub fn windowed_sinc_coefficients(pass_band: f64, order: usize) -> Vec<f64> {
    let pi = std::f64::consts::PI;
    let order = order.max(1);
    let theta_pass = (1.0 - 0.5 * pass_band).clamp(-1.0, 1.0).acos();
    let window: Vec<f64> = (0..=order).map(|i| 0.54 + 0.46 * (i as f64 * pi / (order + 1) as f64).cos()).collect();
    let coefficients_for = |sigma: f64| -> Vec<f64> {
        (0..=order)
            .map(|i| {
                if i == 0 {
                    window[0] * (theta_pass + sigma) / pi
                } else {
                    2.0 * window[i] * (i as f64 * (theta_pass + sigma)).sin() / (i as f64 * pi)
                }
            })
            .collect()
    };
    // The filter at the pass band: Σ cᵢ Tᵢ(cos θ_pb) = Σ cᵢ cos(i θ_pb).
    let response = |coefficients: &[f64]| -> f64 {
        coefficients.iter().enumerate().map(|(i, c)| c * (i as f64 * theta_pass).cos()).sum()
    };
    let mut sigma = 0.0;
    let mut coefficients = coefficients_for(sigma);
    if order > 1 {
        for _ in 0..500 {
            let value = response(&coefficients);
            if (value - 1.0).abs() < 1e-3 {
                break;
            }
            // d/dσ of the response, numerically (the filter is smooth in σ).
            let step = 1e-6;
            let derivative = (response(&coefficients_for(sigma + step)) - value) / step;
            if derivative.abs() < 1e-12 || !derivative.is_finite() {
                break;
            }
            sigma -= (value - 1.0) / derivative;
            coefficients = coefficients_for(sigma);
        }
    }
    coefficients
}

/// x⁽¹⁾ = A x = (x + mean of the stencil) / 2 for one node.
fn half_step(graph: &CornerGraph, positions: &[[f32; 3]], node: usize) -> [f32; 3] {
    let x = positions[node];
    match stencil_mean(graph, positions, node) {
        Some(mean) => std::array::from_fn(|axis| 0.5 * (x[axis] + mean[axis])),
        None => x,
    }
}

/// Mean position of a node's stencil, `None` for a fixed node.
fn stencil_mean(graph: &CornerGraph, positions: &[[f32; 3]], node: usize) -> Option<[f32; 3]> {
    let stencil = graph.stencil(node);
    if stencil.is_empty() {
        return None;
    }
    let mut sum = [0f32; 3];
    for &neighbour in stencil {
        let p = positions[neighbour as usize];
        for axis in 0..3 {
            sum[axis] += p[axis];
        }
    }
    let scale = 1.0 / stencil.len() as f32;
    Some(sum.map(|value| value * scale))
}
