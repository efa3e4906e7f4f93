//! The built-in classical CT model `classical-ct-v1`: body, lungs and bone from Hounsfield-unit
//! thresholds, connected components and hole filling. It needs no weights and is deterministic
//! (the same input always gives byte-identical output), but it is a rough, non-diagnostic model.
//!
//! Input is a CT volume in Hounsfield units on a canonical RAS grid: increasing voxel index along
//! axis 0 moves towards the patient's right, along axis 1 anteriorly, along axis 2 superiorly, so
//! axis 2 is the axial (slice) direction. Spacing may be anisotropic. The output label map lies on
//! exactly the same grid. All voxel work is done in a fixed order (integer and boolean work, and
//! floating-point distances and sums computed the same way every time), so the output is
//! byte-identical from run to run.
//!
//! Steps:
//! 1. Refuse volumes that do not look like CT (see [`segment_classical`]).
//! 2. Body: voxels above [`BODY_THRESHOLD_HU`], less large thin attachments (a table shell lying
//!    against the patient: pieces thinner than 12 mm in their slice, far from anything thicker);
//!    keep the largest 6-connected component and every other one that is a body part (large and
//!    thick: arms lying apart from the trunk); then, in every axial slice, pixels not 4-connected to
//!    the slice border become body (this fills the lungs, the airways and bowel gas; slice-wise
//!    filling works even where the field of view cuts through the patient).
//! 3. Lungs: air-like voxels (below [`LUNG_THRESHOLD_HU`]) inside the filled body, grouped in
//!    6-connected components; a component is lung when it is large enough and not gas-like (bowel
//!    gas is mostly air at −900 HU or below, aerated lung a mixture of air and tissue). Vessels
//!    inside the lungs are then added by filling holes of the lung mask slice by slice.
//! 4. Bone (`bone.rs`): dense voxels (at least [`BONE_SEED_THRESHOLD_HU`]) inside the body and
//!    outside the lungs; seed components that are iodinated contrast (large and uniform: an
//!    enhanced aorta, kidneys) are dropped and closed to growth; the rest grows a few voxels into
//!    partial-volume neighbours above a threshold that follows the voxel size (hysteresis), specks
//!    are removed, and marrow cavities (holes enclosed by bone in an axial slice whose mean value is
//!    bone-like, or fat-like in a limb, which has no spinal canal) are filled.
//! 5. Body label: the filled body minus lungs minus bone.
//!
//! Measured against TotalSegmentator on two real CTs in BENCHMARKS.md (`iris-dev eval classical`).

use iris_core::ErrorCode;
use iris_core::labels::{LabelDescription, LabelTable};
use iris_volume::volume::Volume;

mod bone;
mod grid;

use bone::bone_mask;
use grid::{ConnectedComponents, Grid, fill_holes_in_axial_slices, for_each_in_slice_distance};

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

/// The classical label that a class of TotalSegmentator's `total` task falls in, for measuring the
/// two against each other: the five lung lobes are lungs; vertebrae, ribs, sternum, sacrum, hips,
/// femurs, humeri, scapulae, clavicles and skull are bone. Every other class (organs, vessels,
/// muscles, costal cartilage, the trachea) is `None`: it lies inside the body, but TotalSegmentator
/// does not label the rest of the body, so body has no reference to be compared with.
pub fn classical_counterpart_of_totalsegmentator_class(name: &str) -> Option<u8> {
    const BONE_PREFIXES: [&str; 7] = ["vertebrae_", "rib_", "humerus_", "scapula_", "clavicula_", "femur_", "hip_"];
    if name.starts_with("lung_") && name.contains("lobe") {
        Some(LUNGS_LABEL)
    } else if BONE_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || ["sternum", "sacrum", "skull"].contains(&name)
    {
        Some(BONE_LABEL)
    } else {
        None
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

    let body = filled_body_mask(grid, hounsfield, ct.spacing(), voxel_volume_ml);
    let lungs = lung_mask(grid, hounsfield, &body.inside, voxel_volume_ml);
    let bone = bone_mask(grid, hounsfield, &body, &lungs, ct.spacing(), voxel_volume_ml);

    Ok((0..grid.voxel_count())
        .map(|index| {
            if bone[index] {
                BONE_LABEL
            } else if lungs[index] {
                LUNGS_LABEL
            } else if body.inside[index] {
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
const PURE_AIR_HU: i16 = -900;
/// Components with at least this fraction of pure-air voxels are gas (bowel, stomach), not lung.
/// Aerated lung is a mixture of air and tissue whose voxels mostly lie between −950 and −600 HU.
const GAS_MINIMUM_PURE_AIR_FRACTION: f64 = 0.5;

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

/// The filled body, and which of its voxels lie in a body part apart from the trunk (a limb).
pub(super) struct Body {
    pub(super) inside: Vec<bool>,
    /// Voxels of separate body parts (before hole filling: their holes are not limb).
    limb: Vec<bool>,
}

impl Body {
    pub(super) fn is_limb(&self, index: usize) -> bool {
        self.limb[index]
    }
}

/// The body: the largest connected component above [`BODY_THRESHOLD_HU`] (the trunk, or the head)
/// and every other component that is a body part (see [`is_separate_body_part`]): arms lying beside
/// the trunk, legs, a head apart from the shoulders. Then the holes of every axial slice are filled.
fn filled_body_mask(grid: Grid, hounsfield: &[i16], spacing: [f64; 3], voxel_volume_ml: f64) -> Body {
    let candidates: Vec<bool> = hounsfield.iter().map(|&value| value > BODY_THRESHOLD_HU).collect();
    let candidates = without_large_thin_attachments(grid, candidates, spacing, voxel_volume_ml);
    let components = ConnectedComponents::label(grid, &candidates);
    let largest = components.largest();
    let radii = components.inscribed_radii_mm(grid, spacing);
    let limb_components: Vec<bool> = (1..=components.count() as u32)
        .map(|component| {
            let slot = component as usize - 1;
            Some(component) != largest
                && is_separate_body_part(components.sizes[slot] as f64 * voxel_volume_ml, radii[slot])
        })
        .collect();
    let mut inside =
        components.mask_of(|component| Some(component) == largest || limb_components[component as usize - 1]);
    let limb = components.mask_of(|component| limb_components[component as usize - 1]);
    drop(components);
    fill_holes_in_axial_slices(grid, &mut inside, |_| true);
    Body { inside, limb }
}

/// Parts of the body candidates thinner than twice this (mm) in their axial slice, away from any
/// thicker part, are attachments: a table shell or a cable touching the patient.
const ATTACHMENT_RADIUS_MM: f64 = 6.0;
/// Attachments at least this large (ml) are removed: a table shell under the patient is hundreds
/// of ml; ears, fingers and skin folds, which are thin too, are a few ml and stay.
const ATTACHMENT_MINIMUM_ML: f64 = 20.0;

/// The candidates without large thin attachments (a table shell touching the patient, which
/// would otherwise join the body and put the table's dense shell into bone). The opening of the
/// candidates by a disc of [`ATTACHMENT_RADIUS_MM`] in each axial slice (the pixels within that
/// radius of a pixel at least that far from the outside) keeps every thick part with its surface;
/// what it drops forms pieces, and the large ones are removed.
fn without_large_thin_attachments(
    grid: Grid,
    mut candidates: Vec<bool>,
    spacing: [f64; 3],
    voxel_volume_ml: f64,
) -> Vec<bool> {
    let radius = ATTACHMENT_RADIUS_MM as f32;
    let mut core = vec![false; grid.voxel_count()];
    for_each_in_slice_distance(
        grid,
        spacing,
        |index| !candidates[index],
        |index, distance| {
            core[index] = distance >= radius;
        },
    );
    // Within the radius of the core, with half a diagonal step of slack for the chamfer metric.
    let reach = radius + 0.5 * (spacing[0].hypot(spacing[1]) as f32);
    let mut thin = vec![false; grid.voxel_count()];
    for_each_in_slice_distance(
        grid,
        spacing,
        |index| core[index],
        |index, distance| {
            thin[index] = candidates[index] && distance > reach;
        },
    );
    drop(core);
    let pieces = ConnectedComponents::label(grid, &thin);
    let minimum_voxels = ATTACHMENT_MINIMUM_ML / voxel_volume_ml;
    for (index, &piece) in pieces.component_of_voxel.iter().enumerate() {
        if piece != 0 && pieces.sizes[piece as usize - 1] as f64 >= minimum_voxels {
            candidates[index] = false;
        }
    }
    candidates
}

/// Components apart from the largest that are at least this large (ml) may be body parts.
const BODY_PART_MINIMUM_ML: f64 = 10.0;
/// … if a disc of this radius (mm) fits inside them in some axial slice: a limb does (an adult's
/// forearm is 50–70 mm across, a small child's 30 mm); the shells of a patient table, blankets,
/// tubes and cables (a few mm thick) do not.
const BODY_PART_MINIMUM_RADIUS_MM: f64 = 10.0;

/// Whether a component apart from the largest is a body part rather than equipment: large enough and
/// thick enough. A dense, thick object (a calibration phantom, a bag of fluid) would pass too; CT
/// tables, their foam (below the body threshold) and their shells do not.
fn is_separate_body_part(volume_ml: f64, inscribed_radius_mm: f64) -> bool {
    volume_ml >= BODY_PART_MINIMUM_ML && inscribed_radius_mm >= BODY_PART_MINIMUM_RADIUS_MM
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

#[cfg(test)]
mod tests;
