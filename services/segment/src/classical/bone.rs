//! Bone for the classical model: dense seeds, contrast-filled regions taken out, growth into
//! partial-volume neighbours, specks removed, marrow filled.

use super::grid::{ConnectedComponents, Grid, fill_holes_in_axial_slices};
use super::{BONE_SEED_THRESHOLD_HU, Body};

/// Voxels within [`BONE_GROW_STEPS`] of bone seeds are bone too when they reach the grow
/// threshold: the edges of cortical bone and cancellous bone blurred by partial volume (muscle is
/// 40–60 HU). The threshold follows the in-plane voxel size, because partial volume does: in large
/// voxels a thin bone (a rib) is averaged with the tissue around it and reads low, so the edge must
/// be sought lower ([`BONE_GROW_THRESHOLD_COARSE_HU`] at [`COARSE_VOXEL_MM`] and above); in small
/// voxels that band is bone-free soft tissue and cartilage ([`BONE_GROW_THRESHOLD_FINE_HU`] at
/// [`FINE_VOXEL_MM`] and below); linear between. Measured against TotalSegmentator on a 3 mm and a
/// 0.98 mm CT (BENCHMARKS.md, classical model).
const BONE_GROW_THRESHOLD_COARSE_HU: f64 = 100.0;
const BONE_GROW_THRESHOLD_FINE_HU: f64 = 150.0;
const COARSE_VOXEL_MM: f64 = 2.5;
const FINE_VOXEL_MM: f64 = 1.25;

/// The grow threshold for a grid of this spacing (see [`BONE_GROW_THRESHOLD_COARSE_HU`]).
fn bone_grow_threshold_hu(spacing: [f64; 3]) -> i16 {
    let in_plane = (spacing[0] + spacing[1]) / 2.0;
    let coarseness = ((in_plane - FINE_VOXEL_MM) / (COARSE_VOXEL_MM - FINE_VOXEL_MM)).clamp(0.0, 1.0);
    let threshold =
        BONE_GROW_THRESHOLD_FINE_HU + coarseness * (BONE_GROW_THRESHOLD_COARSE_HU - BONE_GROW_THRESHOLD_FINE_HU);
    // Finite spacings give a value between the two constants; anything else takes the coarse one.
    if threshold.is_finite() { threshold.round() as i16 } else { BONE_GROW_THRESHOLD_COARSE_HU as i16 }
}

/// How many 6-neighbour steps bone grows from its seeds into partial-volume voxels. Counted in
/// voxels, not millimetres, because the partial-volume blur scales with the voxel size.
const BONE_GROW_STEPS: usize = 3;
/// Bone components smaller than this are dropped (noise, calcification specks).
const BONE_MINIMUM_COMPONENT_ML: f64 = 0.5;
/// Holes enclosed by bone in an axial slice are marrow and become bone when their mean value is at
/// least this (HU); the spinal canal (cerebrospinal fluid, cord and epidural fat, about −50–40 HU)
/// stays open.
const MARROW_MINIMUM_MEAN_HU: i64 = 40;
/// In a limb apart from the trunk, holes enclosed by bone are marrow down to this mean (HU): the
/// medullary cavity of an adult's long bone is fatty (−100–0 HU), and a limb has no spinal canal.
const FATTY_MARROW_MINIMUM_MEAN_HU: i64 = -150;

/// Seed components at least this large (ml) are tested for being contrast-filled (see
/// [`is_contrast_filled`]). Smaller ones are bone: at 3 mm a rib's piece is 1–4 ml and as
/// uniform as a vessel, because partial volume flattens it.
const CONTRAST_MINIMUM_ML: f64 = 5.0;
/// A contrast-filled lumen or organ is uniform: its spread is the image noise (20–50 HU);
/// bone mixes cortex (600–1800 HU) with cancellous bone and marrow (100–400 HU).
const CONTRAST_MAXIMUM_SPREAD_HU: f64 = 60.0;
/// … and hardly reaches cortical values: fewer than [`CONTRAST_MAXIMUM_DENSE_FRACTION`] of its
/// voxels reach this (HU). Iodinated blood is 150–500 HU in arterial and portal phases.
const CONTRAST_DENSE_HU: i16 = 500;
const CONTRAST_MAXIMUM_DENSE_FRACTION: f64 = 0.05;

/// Running sums of one seed component's values.
#[derive(Debug, Clone, Copy, Default)]
struct SeedMeasures {
    voxels: u64,
    sum: f64,
    sum_of_squares: f64,
    dense_voxels: u64,
}

/// Whether a seed component is iodinated contrast (an enhanced aorta, the kidneys, a vein) rather
/// than bone: large, uniform and without cortical values. Excreted contrast (renal pelvis, bladder
/// in a delayed phase) can be as dense as cortex and is not caught by this.
fn is_contrast_filled(measures: &SeedMeasures, voxel_volume_ml: f64) -> bool {
    let n = measures.voxels.max(1) as f64;
    let mean = measures.sum / n;
    let spread = (measures.sum_of_squares / n - mean * mean).max(0.0).sqrt();
    measures.voxels as f64 * voxel_volume_ml >= CONTRAST_MINIMUM_ML
        && spread <= CONTRAST_MAXIMUM_SPREAD_HU
        && (measures.dense_voxels as f64) < CONTRAST_MAXIMUM_DENSE_FRACTION * n
}

/// Bone: dense seeds inside the body and outside the lungs; seed components that are contrast, not
/// bone, are removed and closed to growth; the rest grows into partial-volume neighbours; specks
/// are removed and marrow is filled.
pub(super) fn bone_mask(
    grid: Grid,
    hounsfield: &[i16],
    body: &Body,
    lungs: &[bool],
    spacing: [f64; 3],
    voxel_volume_ml: f64,
) -> Vec<bool> {
    let grow_threshold = bone_grow_threshold_hu(spacing);
    let mut allowed: Vec<bool> = (0..grid.voxel_count()).map(|index| body.inside[index] && !lungs[index]).collect();
    let seeds: Vec<bool> =
        (0..grid.voxel_count()).map(|index| allowed[index] && hounsfield[index] >= BONE_SEED_THRESHOLD_HU).collect();
    let seed_components = ConnectedComponents::label(grid, &seeds);
    let mut measures = vec![SeedMeasures::default(); seed_components.count()];
    for (index, &component) in seed_components.component_of_voxel.iter().enumerate() {
        if let Some(measure) = component.checked_sub(1).and_then(|slot| measures.get_mut(slot as usize)) {
            let value = f64::from(hounsfield[index]);
            measure.voxels += 1;
            measure.sum += value;
            measure.sum_of_squares += value * value;
            measure.dense_voxels += u64::from(hounsfield[index] >= CONTRAST_DENSE_HU);
        }
    }
    let contrast: Vec<bool> = measures.iter().map(|m| is_contrast_filled(m, voxel_volume_ml)).collect();
    let mut bone = vec![false; grid.voxel_count()];
    for (index, &component) in seed_components.component_of_voxel.iter().enumerate() {
        if component != 0 {
            if contrast[component as usize - 1] {
                allowed[index] = false;
            } else {
                bone[index] = true;
            }
        }
    }
    drop(seed_components);
    // Grow into adjacent partial-volume voxels, one 6-neighbour step at a time.
    let mut frontier: Vec<usize> = (0..grid.voxel_count()).filter(|&index| bone[index]).collect();
    for _ in 0..BONE_GROW_STEPS {
        let mut next = Vec::new();
        for &index in &frontier {
            grid.for_each_face_neighbour(index, |neighbour| {
                if !bone[neighbour] && allowed[neighbour] && hounsfield[neighbour] >= grow_threshold {
                    bone[neighbour] = true;
                    next.push(neighbour);
                }
            });
        }
        frontier = next;
    }
    // Drop specks.
    let components = ConnectedComponents::label(grid, &bone);
    let minimum_voxels = (BONE_MINIMUM_COMPONENT_ML / voxel_volume_ml).ceil();
    let keep: Vec<bool> = components.sizes.iter().map(|&size| size as f64 >= minimum_voxels).collect();
    let mut bone = components.mask_of(|component| keep.get(component as usize - 1).copied().unwrap_or(false));
    // Fill marrow: enclosed holes of bone-like mean intensity (a contrast-filled lumen inside a
    // calcified wall is not allowed, so it stays open).
    fill_holes_in_axial_slices(grid, &mut bone, |hole| {
        let sum: i64 = hole.iter().map(|&index| i64::from(hounsfield[index])).sum();
        let all_allowed = hole.iter().all(|&index| allowed[index]);
        let pixels = hole.len() as i64;
        let in_a_limb = hole.iter().all(|&index| body.is_limb(index));
        all_allowed
            && (sum >= MARROW_MINIMUM_MEAN_HU * pixels || (in_a_limb && sum >= FATTY_MARROW_MINIMUM_MEAN_HU * pixels))
    });
    bone
}
