//! The built-in classical CT model `classical-ct-v1`: body, lungs and bone from Hounsfield-unit
//! thresholds, connected components and hole filling. It needs no weights and is deterministic
//! (the same input always gives byte-identical output), but it is a rough, non-diagnostic model.
//!
//! Input is a CT volume in Hounsfield units on a canonical RAS grid: increasing voxel index along
//! axis 0 moves towards the patient's right, along axis 1 anteriorly, along axis 2 superiorly, so
//! axis 2 is the axial (slice) direction. Spacing may be anisotropic. The output label map lies on
//! exactly the same grid. Everything is integer or boolean voxel work done in a fixed order, so the
//! output is byte-identical from run to run.
//!
//! Steps:
//! 1. Refuse volumes that do not look like CT (see [`segment_classical`]).
//! 2. Body: voxels above [`BODY_THRESHOLD_HU`]; keep the largest 6-connected component; then, in
//!    every axial slice, pixels not 4-connected to the slice border become body (this fills the
//!    lungs, the airways and bowel gas; slice-wise filling works even where the field of view cuts
//!    through the patient).
//! 3. Lungs: air-like voxels (below [`LUNG_THRESHOLD_HU`]) inside the filled body, grouped in
//!    6-connected components; a component is lung when it is large enough and not gas-like (bowel
//!    gas is nearly pure air, aerated lung is a mixture of air and tissue). Vessels inside the lungs
//!    are then added by filling holes of the lung mask slice by slice.
//! 4. Bone: dense voxels (at least [`BONE_SEED_THRESHOLD_HU`]) inside the body and outside the lungs,
//!    grown a few voxels into adjacent partial-volume voxels (hysteresis), specks removed, and marrow
//!    cavities (holes enclosed by bone in an axial slice whose mean value is bone-like) filled.
//! 5. Body label: the filled body minus lungs minus bone.

use iris_core::ErrorCode;
use iris_core::labels::{LabelDescription, LabelTable};
use iris_volume::volume::Volume;

/// Model name recorded in label tables and statistics.
pub const CLASSICAL_MODEL_NAME: &str = "classical-ct-v1";

/// Label of voxels outside the body.
pub const BACKGROUND_LABEL: u8 = 0;
/// Label of soft tissue: inside the body and neither lung nor bone.
pub const BODY_LABEL: u8 = 1;
/// Label of the lungs.
pub const LUNGS_LABEL: u8 = 2;
/// Label of bone.
pub const BONE_LABEL: u8 = 3;

/// Voxels above this value (HU) are body candidates. Fat is about −100 HU; foam mattresses and
/// cushions (typically −900 to −350 HU) stay outside, so they do not glue the table to the patient.
pub const BODY_THRESHOLD_HU: i16 = -300;

/// Voxels below this value (HU) inside the body are lung (or gas) candidates.
pub const LUNG_THRESHOLD_HU: i16 = -400;

/// Voxels at or above this value (HU) seed the bone mask (cortical and dense cancellous bone).
pub const BONE_SEED_THRESHOLD_HU: i16 = 200;

/// The label table of the classical model: body, lungs and bone; not for diagnosis.
pub fn classical_label_table() -> LabelTable {
    LabelTable {
        model: CLASSICAL_MODEL_NAME.to_string(),
        diagnostic: false,
        labels: vec![
            LabelDescription { id: u16::from(BODY_LABEL), name: "body".to_string(), color: [177, 122, 101] },
            LabelDescription { id: u16::from(LUNGS_LABEL), name: "lungs".to_string(), color: [102, 178, 230] },
            LabelDescription { id: u16::from(BONE_LABEL), name: "bone".to_string(), color: [241, 214, 145] },
        ],
    }
}

/// Why the classical model refused a volume.
#[derive(Debug, thiserror::Error)]
pub enum ClassicalModelError {
    #[error("the volume does not look like a CT in Hounsfield units: {reason}")]
    NotCtLike { reason: String },
}

impl ClassicalModelError {
    /// Stable machine-readable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClassicalModelError::NotCtLike { .. } => ErrorCode::NotCtLike,
        }
    }
}

/// Segments a CT volume (Hounsfield units, canonical RAS grid) into background (0), body (1),
/// lungs (2) and bone (3). The returned label map has one value per voxel, in the volume's order.
///
/// The volume is refused as not CT-like when any of these holds (the rule is lenient on purpose,
/// so that tightly cropped CTs with little or no air are still accepted):
/// - no voxel is at or below −50 HU: every CT of a body contains some fat (about −100 HU), lung or
///   air, whereas MR, PET and other non-negative images contain no negative values at all;
/// - no voxel is above −200 HU: nothing as dense as fat, i.e. no tissue at all;
/// - the values span less than 300 HU (a flat image);
/// - the voxel volume (from the affine) is zero or not finite, or the volume has more than
///   `u32::MAX` voxels.
pub fn segment_classical(ct: &Volume<i16>) -> Result<Vec<u8>, ClassicalModelError> {
    check_ct_like(ct)?;
    let grid = Grid::new(ct.dims());
    let hounsfield = ct.voxels();
    let voxel_volume_ml = ct.voxel_volume_ml();

    let body = filled_body_mask(grid, hounsfield);
    let lungs = lung_mask(grid, hounsfield, &body, voxel_volume_ml);
    let bone = bone_mask(grid, hounsfield, &body, &lungs, voxel_volume_ml);

    Ok((0..grid.voxel_count())
        .map(|index| {
            if bone[index] {
                BONE_LABEL
            } else if lungs[index] {
                LUNGS_LABEL
            } else if body[index] {
                BODY_LABEL
            } else {
                BACKGROUND_LABEL
            }
        })
        .collect())
}

/// Thresholds of the not-CT-like rule, see [`segment_classical`].
const CT_LIKE_FAT_OR_AIR_HU: i16 = -50;
const CT_LIKE_TISSUE_HU: i16 = -200;
const CT_LIKE_MINIMUM_RANGE_HU: i32 = 300;

/// Lung components smaller than this are dropped (bowel gas bubbles, airway fragments).
const LUNG_MINIMUM_COMPONENT_ML: f64 = 15.0;
/// Lung components smaller than this fraction of the largest accepted one are dropped.
const LUNG_MINIMUM_FRACTION_OF_LARGEST: f64 = 0.10;
/// Voxels at or below this value (HU) count as pure air when telling lung from gas.
const PURE_AIR_HU: i16 = -950;
/// Components with at least this fraction of pure-air voxels are gas (bowel, stomach), not lung.
/// Aerated lung is a mixture of air and tissue whose voxels mostly lie between −950 and −600 HU.
const GAS_MINIMUM_PURE_AIR_FRACTION: f64 = 0.5;

/// Voxels of at least this value (HU) within [`BONE_GROW_STEPS`] of bone seeds are bone too: the
/// edges of cortical bone and cancellous bone blurred by partial volume (muscle is 40–60 HU).
const BONE_GROW_THRESHOLD_HU: i16 = 100;
/// How many 6-neighbour steps bone grows from its seeds into partial-volume voxels. Counted in
/// voxels, not millimetres, because the partial-volume blur scales with the voxel size.
const BONE_GROW_STEPS: usize = 3;
/// Bone components smaller than this are dropped (noise, calcification specks).
const BONE_MINIMUM_COMPONENT_ML: f64 = 0.5;
/// Holes enclosed by bone in an axial slice are marrow and become bone when their mean value is at
/// least this (HU); the spinal canal (cerebrospinal fluid and cord, about 0–40 HU) stays open.
const MARROW_MINIMUM_MEAN_HU: i64 = 40;

pub fn check_ct_like(ct: &Volume<i16>) -> Result<(), ClassicalModelError> {
    let refuse = |reason: String| Err(ClassicalModelError::NotCtLike { reason });
    if u32::try_from(ct.voxel_count()).is_err() {
        return refuse(format!("{} voxels are more than the classical model handles", ct.voxel_count()));
    }
    let voxel_volume_ml = ct.voxel_volume_ml();
    if !voxel_volume_ml.is_finite() || voxel_volume_ml <= 0.0 {
        return refuse("the voxel size from the affine is zero or not finite".to_string());
    }
    let voxels = ct.voxels();
    let minimum = voxels.iter().copied().min().unwrap_or(0);
    let maximum = voxels.iter().copied().max().unwrap_or(0);
    if minimum > CT_LIKE_FAT_OR_AIR_HU {
        return refuse(format!(
            "no voxel is at or below {CT_LIKE_FAT_OR_AIR_HU} HU (no fat, lung or air); the lowest value is {minimum}"
        ));
    }
    if maximum <= CT_LIKE_TISSUE_HU {
        return refuse(format!("no voxel is above {CT_LIKE_TISSUE_HU} HU (no tissue); the highest value is {maximum}"));
    }
    if i32::from(maximum) - i32::from(minimum) < CT_LIKE_MINIMUM_RANGE_HU {
        return refuse(format!("values span only {minimum} to {maximum} HU, less than {CT_LIKE_MINIMUM_RANGE_HU} HU"));
    }
    Ok(())
}

/// The body: the largest connected component above [`BODY_THRESHOLD_HU`], with the holes of every
/// axial slice filled.
fn filled_body_mask(grid: Grid, hounsfield: &[i16]) -> Vec<bool> {
    let candidates: Vec<bool> = hounsfield.iter().map(|&value| value > BODY_THRESHOLD_HU).collect();
    let components = ConnectedComponents::label(grid, &candidates);
    let mut body = match components.largest() {
        Some(largest) => components.mask_of(|component| component == largest),
        None => vec![false; grid.voxel_count()],
    };
    fill_holes_in_axial_slices(grid, &mut body, |_| true);
    body
}

/// Per-component measurements of lung candidates.
#[derive(Debug, Clone, Copy, Default)]
struct AirComponentMeasures {
    voxels: u64,
    pure_air_voxels: u64,
}

/// The lungs: large, not gas-like air components inside the body, with enclosed vessels filled in.
fn lung_mask(grid: Grid, hounsfield: &[i16], body: &[bool], voxel_volume_ml: f64) -> Vec<bool> {
    let candidates: Vec<bool> =
        hounsfield.iter().zip(body).map(|(&value, &inside)| inside && value < LUNG_THRESHOLD_HU).collect();
    let components = ConnectedComponents::label(grid, &candidates);
    let mut measures = vec![AirComponentMeasures::default(); components.count()];
    for (index, &component) in components.component_of_voxel.iter().enumerate() {
        if let Some(measure) = component.checked_sub(1).and_then(|slot| measures.get_mut(slot as usize)) {
            measure.voxels += 1;
            if hounsfield[index] <= PURE_AIR_HU {
                measure.pure_air_voxels += 1;
            }
        }
    }
    let is_lung_like = |measure: &AirComponentMeasures| {
        let volume_ml = measure.voxels as f64 * voxel_volume_ml;
        let pure_air_fraction = measure.pure_air_voxels as f64 / measure.voxels.max(1) as f64;
        volume_ml >= LUNG_MINIMUM_COMPONENT_ML && pure_air_fraction < GAS_MINIMUM_PURE_AIR_FRACTION
    };
    let largest_lung_like = measures.iter().filter(|m| is_lung_like(m)).map(|m| m.voxels).max().unwrap_or(0);
    let keep: Vec<bool> = measures
        .iter()
        .map(|m| is_lung_like(m) && m.voxels as f64 >= LUNG_MINIMUM_FRACTION_OF_LARGEST * largest_lung_like as f64)
        .collect();
    let mut lungs = components.mask_of(|component| keep.get(component as usize - 1).copied().unwrap_or(false));
    fill_holes_in_axial_slices(grid, &mut lungs, |_| true);
    lungs
}

/// Bone: dense seeds, grown into partial-volume neighbours, specks removed, marrow filled.
fn bone_mask(grid: Grid, hounsfield: &[i16], body: &[bool], lungs: &[bool], voxel_volume_ml: f64) -> Vec<bool> {
    let allowed: Vec<bool> = (0..grid.voxel_count()).map(|index| body[index] && !lungs[index]).collect();
    let mut bone: Vec<bool> =
        (0..grid.voxel_count()).map(|index| allowed[index] && hounsfield[index] >= BONE_SEED_THRESHOLD_HU).collect();
    // Grow into adjacent partial-volume voxels, one 6-neighbour step at a time.
    let mut frontier: Vec<usize> = (0..grid.voxel_count()).filter(|&index| bone[index]).collect();
    for _ in 0..BONE_GROW_STEPS {
        let mut next = Vec::new();
        for &index in &frontier {
            grid.for_each_face_neighbour(index, |neighbour| {
                if !bone[neighbour] && allowed[neighbour] && hounsfield[neighbour] >= BONE_GROW_THRESHOLD_HU {
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
    // Fill marrow: enclosed holes of bone-like mean intensity.
    fill_holes_in_axial_slices(grid, &mut bone, |hole| {
        let sum: i64 = hole.iter().map(|&index| i64::from(hounsfield[index])).sum();
        let all_allowed = hole.iter().all(|&index| allowed[index]);
        all_allowed && sum >= MARROW_MINIMUM_MEAN_HU * hole.len() as i64
    });
    bone
}

/// Dimensions of a voxel grid in NIfTI order (axis 0 fastest) and neighbour arithmetic.
#[derive(Debug, Clone, Copy)]
struct Grid {
    dims: [usize; 3],
}

impl Grid {
    fn new(dims: [usize; 3]) -> Self {
        Grid { dims }
    }

    fn voxel_count(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Calls `visit` with the linear index of each of the up to six face neighbours of `index`.
    #[inline]
    fn for_each_face_neighbour(&self, index: usize, mut visit: impl FnMut(usize)) {
        let [nx, ny, nz] = self.dims;
        let slice_len = nx * ny;
        let i = index % nx;
        let j = (index / nx) % ny;
        let k = index / slice_len;
        if i > 0 {
            visit(index - 1);
        }
        if i + 1 < nx {
            visit(index + 1);
        }
        if j > 0 {
            visit(index - nx);
        }
        if j + 1 < ny {
            visit(index + nx);
        }
        if k > 0 {
            visit(index - slice_len);
        }
        if k + 1 < nz {
            visit(index + slice_len);
        }
    }
}

/// 6-connected components of a boolean mask, numbered 1, 2, … in order of their first voxel
/// (so the numbering is deterministic); 0 marks voxels outside the mask.
struct ConnectedComponents {
    component_of_voxel: Vec<u32>,
    /// `sizes[c - 1]` is the voxel count of component `c`.
    sizes: Vec<u64>,
}

impl ConnectedComponents {
    /// Labels the components with an explicit-stack flood fill (no recursion).
    /// Precondition: `mask.len() == grid.voxel_count() <= u32::MAX`.
    fn label(grid: Grid, mask: &[bool]) -> Self {
        let mut component_of_voxel = vec![0u32; mask.len()];
        let mut sizes: Vec<u64> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        for start in 0..mask.len() {
            if !mask[start] || component_of_voxel[start] != 0 {
                continue;
            }
            sizes.push(0);
            let component = sizes.len() as u32;
            let mut size = 0u64;
            component_of_voxel[start] = component;
            stack.push(start);
            while let Some(index) = stack.pop() {
                size += 1;
                grid.for_each_face_neighbour(index, |neighbour| {
                    if mask[neighbour] && component_of_voxel[neighbour] == 0 {
                        component_of_voxel[neighbour] = component;
                        stack.push(neighbour);
                    }
                });
            }
            if let Some(last) = sizes.last_mut() {
                *last = size;
            }
        }
        ConnectedComponents { component_of_voxel, sizes }
    }

    fn count(&self) -> usize {
        self.sizes.len()
    }

    /// The component with the most voxels (the lowest-numbered one among equals).
    fn largest(&self) -> Option<u32> {
        let mut best: Option<(u32, u64)> = None;
        for (slot, &size) in self.sizes.iter().enumerate() {
            if best.is_none_or(|(_, best_size)| size > best_size) {
                best = Some((slot as u32 + 1, size));
            }
        }
        best.map(|(component, _)| component)
    }

    /// Mask of the voxels whose component satisfies `keep` (called with ids ≥ 1 only).
    fn mask_of(&self, keep: impl Fn(u32) -> bool) -> Vec<bool> {
        self.component_of_voxel.iter().map(|&component| component != 0 && keep(component)).collect()
    }
}

/// In every axial slice (fixed index along axis 2), finds the holes of `mask`: 4-connected groups
/// of unmasked pixels that do not touch the slice border. Each hole for which `accept` (given the
/// linear voxel indices of the hole) returns true is added to the mask.
fn fill_holes_in_axial_slices(grid: Grid, mask: &mut [bool], accept: impl Fn(&[usize]) -> bool) {
    let mut hole_voxels: Vec<usize> = Vec::new();
    let [nx, ny, nz] = grid.dims;
    let slice_len = grid.slice_len();
    // 0 = not yet visited, 1 = unmasked and connected to the border, 2 = visited hole pixel.
    let mut state = vec![0u8; slice_len];
    let mut stack: Vec<usize> = Vec::new();
    let mut hole: Vec<usize> = Vec::new();
    for k in 0..nz {
        let base = k * slice_len;
        let slice = &mut mask[base..base + slice_len];
        state.fill(0);
        let neighbours_in_slice = |pixel: usize, visit: &mut dyn FnMut(usize)| {
            let i = pixel % nx;
            let j = pixel / nx;
            if i > 0 {
                visit(pixel - 1);
            }
            if i + 1 < nx {
                visit(pixel + 1);
            }
            if j > 0 {
                visit(pixel - nx);
            }
            if j + 1 < ny {
                visit(pixel + nx);
            }
        };
        // Flood the unmasked pixels reachable from the border.
        let border_pixels =
            (0..nx).flat_map(|i| [i, i + nx * (ny - 1)]).chain((0..ny).flat_map(|j| [nx * j, nx * j + nx - 1]));
        for pixel in border_pixels {
            if !slice[pixel] && state[pixel] == 0 {
                state[pixel] = 1;
                stack.push(pixel);
            }
        }
        while let Some(pixel) = stack.pop() {
            neighbours_in_slice(pixel, &mut |neighbour| {
                if !slice[neighbour] && state[neighbour] == 0 {
                    state[neighbour] = 1;
                    stack.push(neighbour);
                }
            });
        }
        // Every other unmasked pixel belongs to a hole; collect each hole and ask whether to fill it.
        for start in 0..slice_len {
            if slice[start] || state[start] != 0 {
                continue;
            }
            hole.clear();
            state[start] = 2;
            stack.push(start);
            while let Some(pixel) = stack.pop() {
                hole.push(pixel);
                neighbours_in_slice(pixel, &mut |neighbour| {
                    if !slice[neighbour] && state[neighbour] == 0 {
                        state[neighbour] = 2;
                        stack.push(neighbour);
                    }
                });
            }
            hole_voxels.clear();
            hole_voxels.extend(hole.iter().map(|&pixel| base + pixel));
            if accept(&hole_voxels) {
                for &pixel in &hole {
                    slice[pixel] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iris_volume::phantom::{PhantomSpec, landmarks, synthetic_ct};
    use iris_volume::volume::{Affine, Reorientation};

    /// Spacing of the synthetic torso (mm): anisotropic, as many clinical CTs are.
    const SPACING: [f64; 3] = [2.5, 2.5, 4.0];
    const DIMS: [usize; 3] = [48, 48, 30];

    /// What each voxel of the synthetic torso was drawn as.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Drawn {
        Air,
        Table,
        SoftTissue,
        Gas,
        Lung,
        LungVessel,
        Bone,
        Marrow,
        SpinalCanal,
    }

    /// Position (mm) of a voxel relative to the grid centre, RAS.
    fn position(i: usize, j: usize, k: usize) -> [f64; 3] {
        [i, j, k]
            .iter()
            .enumerate()
            .map(|(axis, &index)| (index as f64 - (DIMS[axis] as f64 - 1.0) / 2.0) * SPACING[axis])
            .collect::<Vec<_>>()
            .try_into()
            .unwrap()
    }

    fn inside_ellipsoid(p: [f64; 3], centre: [f64; 3], semi_axes: [f64; 3]) -> bool {
        (0..3).map(|a| ((p[a] - centre[a]) / semi_axes[a]).powi(2)).sum::<f64>() <= 1.0
    }

    /// A torso (elliptic cylinder of soft tissue in air) with two lungs crossed by a vessel each, a
    /// bowel gas pocket, a spine (cortical ring around marrow) with a bony arch around the spinal
    /// canal, and a patient table separated from the body by a gap of air.
    fn drawn_at(p: [f64; 3]) -> Drawn {
        let [x, y, _] = p;
        if (-56.0..=-52.0).contains(&y) && x.abs() <= 55.0 {
            return Drawn::Table;
        }
        if (x / 50.0).powi(2) + (y / 45.0).powi(2) > 1.0 {
            return Drawn::Air;
        }
        for side in [-1.0, 1.0] {
            let centre = [side * 27.0, 0.0, 20.0];
            if inside_ellipsoid(p, centre, [16.0, 20.0, 30.0]) {
                let vessel = (x - centre[0]).hypot(y - 3.0) <= 3.0;
                return if vessel { Drawn::LungVessel } else { Drawn::Lung };
            }
        }
        if inside_ellipsoid(p, [-15.0, 10.0, -38.0], [18.0, 14.0, 16.0]) {
            return Drawn::Gas;
        }
        let from_spine = x.hypot(y + 16.0);
        if from_spine <= 4.5 {
            return Drawn::Marrow;
        }
        if from_spine <= 9.0 {
            return Drawn::Bone;
        }
        let from_canal = x.hypot(y + 31.0);
        if from_canal <= 4.0 {
            return Drawn::SpinalCanal;
        }
        if from_canal <= 7.5 {
            return Drawn::Bone;
        }
        Drawn::SoftTissue
    }

    fn hounsfield_of(drawn: Drawn) -> i16 {
        match drawn {
            Drawn::Air | Drawn::Gas => -1000,
            Drawn::Table => 200,
            Drawn::SoftTissue | Drawn::LungVessel => 40,
            Drawn::Lung => -850,
            Drawn::Bone => 700,
            Drawn::Marrow => 70,
            Drawn::SpinalCanal => 15,
        }
    }

    fn ras_affine() -> Affine {
        Affine([
            [SPACING[0], 0.0, 0.0, -60.0],
            [0.0, SPACING[1], 0.0, -60.0],
            [0.0, 0.0, SPACING[2], -60.0],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    /// The drawn class of every voxel, and the CT (with ±`noise` HU of hashed noise).
    fn synthetic_torso(noise: i32) -> (Vec<Drawn>, Volume<i16>) {
        let mut drawn = Vec::new();
        let mut values = Vec::new();
        for k in 0..DIMS[2] {
            for j in 0..DIMS[1] {
                for i in 0..DIMS[0] {
                    let class = drawn_at(position(i, j, k));
                    let hash = (drawn.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    let jitter = if noise == 0 { 0 } else { (hash % (2 * noise as u64 + 1)) as i32 - noise };
                    drawn.push(class);
                    values.push((i32::from(hounsfield_of(class)) + jitter) as i16);
                }
            }
        }
        (drawn, Volume::new(DIMS, ras_affine(), values).unwrap())
    }

    fn count(labels: &[u8], label: u8) -> usize {
        labels.iter().filter(|&&l| l == label).count()
    }

    #[test]
    fn synthetic_torso_is_labelled_as_drawn() {
        let (drawn, ct) = synthetic_torso(0);
        let labels = segment_classical(&ct).unwrap();
        assert_eq!(labels.len(), ct.voxel_count());
        let drawn_count = |wanted: &[Drawn]| drawn.iter().filter(|d| wanted.contains(d)).count();
        let label_of = |p: [f64; 3]| {
            let index: Vec<usize> =
                (0..3).map(|a| ((p[a] / SPACING[a]) + (DIMS[a] as f64 - 1.0) / 2.0).round() as usize).collect();
            labels[ct.linear_index(index[0], index[1], index[2])]
        };
        // Chosen voxels.
        assert_eq!(label_of([27.0, -10.0, 20.0]), LUNGS_LABEL, "right lung");
        assert_eq!(label_of([-27.0, -10.0, 20.0]), LUNGS_LABEL, "left lung");
        assert_eq!(label_of([27.0, 3.0, 20.0]), LUNGS_LABEL, "vessel inside the lung counts as lung");
        assert_eq!(label_of([0.0, -16.0 + 7.0, 0.0]), BONE_LABEL, "vertebral cortex");
        assert_eq!(label_of([0.0, -16.0, 0.0]), BONE_LABEL, "marrow enclosed by cortex");
        assert_eq!(label_of([0.0, -31.0, 0.0]), BODY_LABEL, "spinal canal stays soft tissue");
        assert_eq!(label_of([-15.0, 10.0, -38.0]), BODY_LABEL, "bowel gas is not lung");
        assert_eq!(label_of([0.0, 30.0, 0.0]), BODY_LABEL, "soft tissue");
        assert_eq!(label_of([0.0, -54.0, 0.0]), BACKGROUND_LABEL, "the table is not body");
        assert_eq!(label_of([0.0, 55.0, 0.0]), BACKGROUND_LABEL, "air in front of the body");
        // Counts: every drawn voxel of a class ends up in the corresponding label.
        let lungs = drawn_count(&[Drawn::Lung]);
        let lungs_with_vessels = drawn_count(&[Drawn::Lung, Drawn::LungVessel]);
        assert!(lungs > 2500, "the drawn lungs (two times 40 ml) are large enough to be kept ({lungs} voxels)");
        let labelled_lungs = count(&labels, LUNGS_LABEL);
        assert!(
            (lungs + (lungs_with_vessels - lungs) * 8 / 10..=lungs_with_vessels).contains(&labelled_lungs),
            "lungs: {labelled_lungs} labelled, {lungs} drawn plus {} vessel voxels",
            lungs_with_vessels - lungs
        );
        assert_eq!(count(&labels, BONE_LABEL), drawn_count(&[Drawn::Bone, Drawn::Marrow]));
        let body = drawn_count(&[
            Drawn::SoftTissue,
            Drawn::Gas,
            Drawn::Lung,
            Drawn::LungVessel,
            Drawn::Bone,
            Drawn::Marrow,
            Drawn::SpinalCanal,
        ]);
        assert_eq!(count(&labels, BACKGROUND_LABEL), ct.voxel_count() - body);
        assert_eq!(count(&labels, BODY_LABEL), body - labelled_lungs - count(&labels, BONE_LABEL));
        for (index, class) in drawn.iter().enumerate() {
            let expected: &[u8] = match class {
                Drawn::Air | Drawn::Table => &[BACKGROUND_LABEL],
                Drawn::SoftTissue | Drawn::Gas | Drawn::SpinalCanal => &[BODY_LABEL],
                Drawn::Lung => &[LUNGS_LABEL],
                Drawn::LungVessel => &[LUNGS_LABEL, BODY_LABEL],
                Drawn::Bone | Drawn::Marrow => &[BONE_LABEL],
            };
            assert!(expected.contains(&labels[index]), "voxel {index} drawn as {class:?} labelled {}", labels[index]);
        }
    }

    #[test]
    fn uniform_soft_tissue_is_not_ct_like() {
        let ct = Volume::new([8, 8, 8], Affine::identity(), vec![40i16; 512]).unwrap();
        let error = segment_classical(&ct).unwrap_err();
        assert!(matches!(error, ClassicalModelError::NotCtLike { .. }));
        assert_eq!(error.code(), ErrorCode::NotCtLike);
        assert!(error.to_string().contains("no voxel is at or below -50 HU"), "{error}");
    }

    #[test]
    fn other_non_ct_volumes_are_refused() {
        // All air: no tissue.
        let air = Volume::new([4, 4, 4], Affine::identity(), vec![-1000i16; 64]).unwrap();
        assert!(segment_classical(&air).unwrap_err().to_string().contains("no tissue"));
        // An MR-like magnitude image: non-negative values only.
        let magnitude = Volume::new([4, 4, 4], Affine::identity(), (0..64).map(|v| v * 30).collect()).unwrap();
        assert_eq!(segment_classical(&magnitude).unwrap_err().code(), ErrorCode::NotCtLike);
        // A narrow range straddling the split.
        let flat = Volume::new([4, 4, 4], Affine::identity(), (0..64).map(|v| -300 + v * 3).collect()).unwrap();
        assert!(segment_classical(&flat).unwrap_err().to_string().contains("less than 300 HU"));
        // A degenerate affine gives no voxel size.
        let mut singular = Affine::identity();
        singular.0[1][1] = 0.0;
        let degenerate = Volume::new([4, 4, 4], singular, (0..64).map(|v| -1000 + v * 30).collect()).unwrap();
        assert!(segment_classical(&degenerate).is_err());
    }

    #[test]
    fn cropped_ct_without_air_is_accepted() {
        // Fat and muscle only, with a bone block of 64 voxels of 27 mm³ (1.7 ml): the whole volume is body.
        let values: Vec<i16> = (0..1000).map(|n| if n % 10 < 5 { -100 } else { 50 }).collect();
        let mut ct_values = values;
        for (index, value) in ct_values.iter_mut().enumerate() {
            let (i, j, k) = (index % 10, (index / 10) % 10, index / 100);
            if (3..7).contains(&i) && (3..7).contains(&j) && (3..7).contains(&k) {
                *value = 800;
            }
        }
        let three_mm = Affine([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
        let ct = Volume::new([10, 10, 10], three_mm, ct_values).unwrap();
        let labels = segment_classical(&ct).unwrap();
        assert_eq!(count(&labels, BACKGROUND_LABEL), 0);
        assert_eq!(count(&labels, LUNGS_LABEL), 0);
        assert_eq!(count(&labels, BONE_LABEL), 64);
    }

    #[test]
    fn thin_and_single_voxel_volumes_do_not_panic() {
        for dims in [[1, 1, 1], [1, 5, 1], [7, 1, 3], [1, 1, 9]] {
            let n = dims.iter().product::<usize>();
            let values: Vec<i16> = (0..n).map(|v| if v % 2 == 0 { -1000 } else { 500 }).collect();
            let ct = Volume::new(dims, Affine::identity(), values).unwrap();
            if let Ok(labels) = segment_classical(&ct) {
                assert_eq!(labels.len(), n);
            }
        }
    }

    #[test]
    fn segmentation_is_deterministic() {
        let (_, ct) = synthetic_torso(30);
        let first = segment_classical(&ct).unwrap();
        let second = segment_classical(&ct).unwrap();
        assert_eq!(first, second);
        assert!(count(&first, LUNGS_LABEL) > 2500 && count(&first, BONE_LABEL) > 300);
    }

    #[test]
    fn label_table_describes_the_three_labels() {
        let table = classical_label_table();
        assert_eq!(table.model, CLASSICAL_MODEL_NAME);
        assert!(!table.diagnostic);
        let names: Vec<(u16, &str)> = table.labels.iter().map(|l| (l.id, l.name.as_str())).collect();
        assert_eq!(names, [(1, "body"), (2, "lungs"), (3, "bone")]);
        assert_eq!(table.find(3).map(|l| l.color), Some([241, 214, 145]));
    }

    /// The phantom, reoriented from LPS to canonical RAS, is labelled as its anatomy says.
    #[test]
    fn phantom_is_segmented_correctly_after_canonical_reorientation() {
        let ct = synthetic_ct(&PhantomSpec::small());
        let reorientation = Reorientation::to_canonical(ct.dims(), ct.affine()).unwrap();
        assert!(!reorientation.is_identity());
        let canonical = reorientation.apply(&ct).unwrap();
        let labels = segment_classical(&canonical).unwrap();
        let label_at_world = |world: [f64; 3]| {
            let m = &canonical.affine().0;
            let index: Vec<usize> = (0..3).map(|a| ((world[a] - m[a][3]) / m[a][a]).round() as usize).collect();
            labels[canonical.linear_index(index[0], index[1], index[2])]
        };
        assert_eq!(label_at_world(landmarks::RIGHT_LUNG), LUNGS_LABEL);
        assert_eq!(label_at_world(landmarks::LEFT_LUNG), LUNGS_LABEL);
        assert_eq!(label_at_world(landmarks::VERTEBRAL_BODY), BONE_LABEL);
        assert_eq!(label_at_world(landmarks::LIVER), BODY_LABEL);
        assert_eq!(label_at_world(landmarks::STOMACH_GAS), BODY_LABEL);
        assert_eq!(label_at_world(landmarks::SPINAL_CANAL), BODY_LABEL);
        assert_eq!(label_at_world(landmarks::MEDIASTINUM), BODY_LABEL);
        assert_eq!(label_at_world(landmarks::OUTSIDE), BACKGROUND_LABEL);
        // By intensity: lung parenchyma (−850 ± 10 HU) is lung, dense bone (≥ 500 HU) is bone.
        let values = canonical.voxels();
        let fraction_labelled = |range: std::ops::RangeInclusive<i16>, label: u8| {
            let selected: Vec<usize> = (0..values.len()).filter(|&n| range.contains(&values[n])).collect();
            assert!(selected.len() > 500);
            selected.iter().filter(|&&n| labels[n] == label).count() as f64 / selected.len() as f64
        };
        assert!(fraction_labelled(-860..=-840, LUNGS_LABEL) > 0.99);
        assert!(fraction_labelled(500..=710, BONE_LABEL) > 0.99);
        assert!(fraction_labelled(30..=70, BODY_LABEL) > 0.95);
    }
}
