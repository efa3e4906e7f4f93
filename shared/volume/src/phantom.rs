//! A synthetic CT phantom for `iris demo` and for tests: a simplified adult trunk in Hounsfield
//! units, on a non-canonical LPS grid (as DICOM-derived volumes are), so that canonical
//! reorientation is exercised. The anatomy is defined in world millimetres, so phantoms of
//! different resolutions show the same body and differ only in sampling.
//!
//! World coordinates are RAS+ (x towards the patient's right, y anterior, z superior) with the
//! origin at the centre of the field of view. The content, in painting order (later wins):
//! - air (−1000 HU) outside the body;
//! - the trunk: an elliptic cylinder along z (semi-axes 130 mm left–right, 95 mm antero-posterior)
//!   through the whole field of view, with a subcutaneous fat layer (−100 HU, 8 mm) around soft
//!   tissue (40 HU);
//! - the liver (60 HU): an ellipsoid on the patient's right (positive x), below the right lung;
//! - a stomach gas bubble (−1000 HU) on the patient's left, in the upper abdomen;
//! - two lungs (−850 HU): ellipsoids left and right in the upper half, each with a vessel (40 HU)
//!   running along z through it;
//! - the spine, posterior: vertebral bodies (700 HU cortex, 250 HU cancellous core) separated by
//!   discs (80 HU) every 30 mm, and a continuous posterior arch (700 HU) around the spinal canal
//!   (15 HU);
//! - five pairs of ribs (600 HU): tubes along elliptic arcs around the chest, from beside the spine
//!   to short of the sternum.
//!
//! A deterministic pseudo-noise of at most ±10 HU, a hash of the voxel index, is added everywhere.

use crate::volume::{Affine, Volume};

/// Grid of a synthetic CT: dimensions (voxels) and isotropic spacing (mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhantomSpec {
    pub dims: [usize; 3],
    pub spacing_mm: f64,
}

impl PhantomSpec {
    /// The `iris demo` phantom: 192 × 160 × 120 voxels of 1.5 mm (288 × 240 × 180 mm, 3.7 M voxels).
    pub fn demo() -> Self {
        PhantomSpec { dims: [192, 160, 120], spacing_mm: 1.5 }
    }

    /// A coarse phantom for fast tests: 64 × 54 × 40 voxels of 4.5 mm, nearly the same field of view
    /// as [`PhantomSpec::demo`] (288 × 243 × 180 mm).
    pub fn small() -> Self {
        PhantomSpec { dims: [64, 54, 40], spacing_mm: 4.5 }
    }
}

/// Hounsfield values of the phantom's tissues (before noise).
pub const PHANTOM_AIR_HU: i16 = -1000;
pub const PHANTOM_FAT_HU: i16 = -100;
pub const PHANTOM_SOFT_TISSUE_HU: i16 = 40;
pub const PHANTOM_LIVER_HU: i16 = 60;
pub const PHANTOM_LUNG_HU: i16 = -850;
pub const PHANTOM_VESSEL_HU: i16 = 40;
pub const PHANTOM_CORTICAL_BONE_HU: i16 = 700;
pub const PHANTOM_CANCELLOUS_BONE_HU: i16 = 250;
pub const PHANTOM_DISC_HU: i16 = 80;
pub const PHANTOM_SPINAL_CANAL_HU: i16 = 15;
pub const PHANTOM_RIB_HU: i16 = 600;
/// Largest magnitude of the added pseudo-noise, HU.
pub const PHANTOM_NOISE_HU: i32 = 10;

/// The voxel-to-world affine of a phantom grid: LPS orientation (voxel axis 0 runs towards the
/// patient's left, axis 1 posteriorly, axis 2 superiorly) with the field of view centred on the
/// world origin, so the translation is non-zero.
///
/// Dimensions below 1 are treated as 1, and a spacing that is not a positive finite number as 1 mm,
/// here and in [`synthetic_ct`].
pub fn phantom_affine(spec: &PhantomSpec) -> Affine {
    let (dims, spacing) = sanitized(spec);
    let half_extent = |axis: usize| spacing * (dims[axis] as f64 - 1.0) / 2.0;
    Affine([
        [-spacing, 0.0, 0.0, half_extent(0)],
        [0.0, -spacing, 0.0, half_extent(1)],
        [0.0, 0.0, spacing, -half_extent(2)],
        [0.0, 0.0, 0.0, 1.0],
    ])
}

/// Builds the synthetic CT described in the module documentation on the grid of `spec`.
/// Deterministic: the same spec always gives the same voxels.
pub fn synthetic_ct(spec: &PhantomSpec) -> Volume<i16> {
    let (dims, _) = sanitized(spec);
    let affine = phantom_affine(spec);
    // The affine is diagonal, so each world coordinate depends on one voxel index only.
    let world_x: Vec<f64> = (0..dims[0]).map(|i| affine.apply([i as f64, 0.0, 0.0])[0]).collect();
    let world_y: Vec<f64> = (0..dims[1]).map(|j| affine.apply([0.0, j as f64, 0.0])[1]).collect();
    let world_z: Vec<f64> = (0..dims[2]).map(|k| affine.apply([0.0, 0.0, k as f64])[2]).collect();
    let mut voxels = Vec::with_capacity(dims[0] * dims[1] * dims[2]);
    for &z in &world_z {
        for &y in &world_y {
            for &x in &world_x {
                let index = voxels.len() as u64;
                let value = i32::from(tissue_hounsfield([x, y, z])) + pseudo_noise(index);
                voxels.push(value.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
            }
        }
    }
    Volume::new(dims, affine, voxels).expect("sanitized dims are at least 1 and one value was made per voxel")
}

/// The noiseless value (HU) of the phantom at a world RAS position (mm).
pub fn tissue_hounsfield(world: [f64; 3]) -> i16 {
    let [x, y, z] = world;
    let mut value = PHANTOM_AIR_HU;
    if inside_ellipse(x, y, TRUNK_SEMI_AXES) {
        value = PHANTOM_FAT_HU;
    }
    if inside_ellipse(x, y, [TRUNK_SEMI_AXES[0] - FAT_THICKNESS_MM, TRUNK_SEMI_AXES[1] - FAT_THICKNESS_MM]) {
        value = PHANTOM_SOFT_TISSUE_HU;
    }
    if inside_ellipsoid(world, LIVER_CENTRE, LIVER_SEMI_AXES) {
        value = PHANTOM_LIVER_HU;
    }
    if inside_ellipsoid(world, STOMACH_GAS_CENTRE, STOMACH_GAS_SEMI_AXES) {
        value = PHANTOM_AIR_HU;
    }
    for side in [1.0, -1.0] {
        let centre = [side * LUNG_CENTRE[0], LUNG_CENTRE[1], LUNG_CENTRE[2]];
        if inside_ellipsoid(world, centre, LUNG_SEMI_AXES) {
            let vessel = (x - centre[0]).hypot(y - centre[1]) <= LUNG_VESSEL_RADIUS_MM;
            value = if vessel { PHANTOM_VESSEL_HU } else { PHANTOM_LUNG_HU };
        }
    }
    if let Some(spine) = spine_hounsfield(x, y, z) {
        value = spine;
    }
    if inside_rib(x, y, z) {
        value = PHANTOM_RIB_HU;
    }
    value
}

/// World positions (RAS mm) of landmarks inside the phantom's structures, for tests and checks.
pub mod landmarks {
    /// Inside the right lung (patient's right: positive x), away from its vessel.
    pub const RIGHT_LUNG: [f64; 3] = [70.0, -25.0, 40.0];
    /// Inside the left lung, away from its vessel.
    pub const LEFT_LUNG: [f64; 3] = [-70.0, -25.0, 40.0];
    /// Centre of a vertebral body (cancellous core), between two discs.
    pub const VERTEBRAL_BODY: [f64; 3] = [0.0, -45.0, 15.0];
    /// Inside the spinal canal.
    pub const SPINAL_CANAL: [f64; 3] = [0.0, -70.0, 0.0];
    /// Inside the liver, on the patient's right, below the right lung.
    pub const LIVER: [f64; 3] = [60.0, 5.0, -50.0];
    /// Inside the stomach gas bubble, on the patient's left.
    pub const STOMACH_GAS: [f64; 3] = [-50.0, 25.0, -40.0];
    /// Soft tissue in front of the spine, between the lungs.
    pub const MEDIASTINUM: [f64; 3] = [0.0, 20.0, 40.0];
    /// Outside the body, in front of the chest.
    pub const OUTSIDE: [f64; 3] = [0.0, 110.0, 0.0];
}

const TRUNK_SEMI_AXES: [f64; 2] = [130.0, 95.0];
const FAT_THICKNESS_MM: f64 = 8.0;
const LUNG_CENTRE: [f64; 3] = [62.0, 5.0, 50.0];
const LUNG_SEMI_AXES: [f64; 3] = [40.0, 55.0, 65.0];
const LUNG_VESSEL_RADIUS_MM: f64 = 4.0;
const LIVER_CENTRE: [f64; 3] = [55.0, 5.0, -40.0];
const LIVER_SEMI_AXES: [f64; 3] = [55.0, 55.0, 40.0];
const STOMACH_GAS_CENTRE: [f64; 3] = [-50.0, 25.0, -40.0];
const STOMACH_GAS_SEMI_AXES: [f64; 3] = [30.0, 20.0, 15.0];
const VERTEBRAL_BODY_CENTRE: [f64; 2] = [0.0, -45.0];
const VERTEBRAL_BODY_RADIUS_MM: f64 = 16.0;
const VERTEBRAL_CORTEX_MM: f64 = 3.0;
const VERTEBRA_PERIOD_MM: f64 = 30.0;
const DISC_THICKNESS_MM: f64 = 6.0;
const SPINAL_CANAL_CENTRE: [f64; 2] = [0.0, -70.0];
const SPINAL_CANAL_RADIUS_MM: f64 = 7.0;
const VERTEBRAL_ARCH_OUTER_RADIUS_MM: f64 = 12.0;
const RIB_LEVELS_MM: [f64; 5] = [-5.0, 17.0, 39.0, 61.0, 83.0];
const RIB_ARC_SEMI_AXES: [f64; 2] = [112.0, 80.0];
const RIB_RADIUS_MM: f64 = 5.0;
/// Ribs run from this angle (degrees from the posterior midline) to [`RIB_END_DEGREES`] on each side.
const RIB_START_DEGREES: f64 = 15.0;
const RIB_END_DEGREES: f64 = 150.0;

fn sanitized(spec: &PhantomSpec) -> ([usize; 3], f64) {
    let dims = spec.dims.map(|d| d.max(1));
    let spacing = if spec.spacing_mm.is_finite() && spec.spacing_mm > 0.0 { spec.spacing_mm } else { 1.0 };
    (dims, spacing)
}

fn inside_ellipse(x: f64, y: f64, semi_axes: [f64; 2]) -> bool {
    (x / semi_axes[0]).powi(2) + (y / semi_axes[1]).powi(2) <= 1.0
}

fn inside_ellipsoid(point: [f64; 3], centre: [f64; 3], semi_axes: [f64; 3]) -> bool {
    (0..3).map(|axis| ((point[axis] - centre[axis]) / semi_axes[axis]).powi(2)).sum::<f64>() <= 1.0
}

/// The spine's value at a world position, or `None` outside it.
fn spine_hounsfield(x: f64, y: f64, z: f64) -> Option<i16> {
    let from_body = (x - VERTEBRAL_BODY_CENTRE[0]).hypot(y - VERTEBRAL_BODY_CENTRE[1]);
    if from_body <= VERTEBRAL_BODY_RADIUS_MM {
        let in_disc = z.rem_euclid(VERTEBRA_PERIOD_MM) < DISC_THICKNESS_MM;
        return Some(if in_disc {
            PHANTOM_DISC_HU
        } else if from_body > VERTEBRAL_BODY_RADIUS_MM - VERTEBRAL_CORTEX_MM {
            PHANTOM_CORTICAL_BONE_HU
        } else {
            PHANTOM_CANCELLOUS_BONE_HU
        });
    }
    let from_canal = (x - SPINAL_CANAL_CENTRE[0]).hypot(y - SPINAL_CANAL_CENTRE[1]);
    if from_canal <= SPINAL_CANAL_RADIUS_MM {
        Some(PHANTOM_SPINAL_CANAL_HU)
    } else if from_canal <= VERTEBRAL_ARCH_OUTER_RADIUS_MM {
        Some(PHANTOM_CORTICAL_BONE_HU)
    } else {
        None
    }
}

/// Whether a world position lies inside one of the ribs: tubes around horizontal elliptic arcs.
fn inside_rib(x: f64, y: f64, z: f64) -> bool {
    let Some(level) = RIB_LEVELS_MM.iter().find(|level| (z - **level).abs() <= RIB_RADIUS_MM) else {
        return false;
    };
    let [a, b] = RIB_ARC_SEMI_AXES;
    // Angle from the posterior midline, measured in the ellipse's normalised coordinates.
    let angle = (x / a).atan2(-y / b);
    let degrees = angle.abs().to_degrees();
    if !(RIB_START_DEGREES..=RIB_END_DEGREES).contains(&degrees) {
        return false;
    }
    // Distance to the arc point at the same angle: close to the true distance for this gentle ellipse.
    let arc_point = [a * angle.sin(), -b * angle.cos()];
    let in_plane = (x - arc_point[0]).hypot(y - arc_point[1]);
    in_plane.hypot(z - level) <= RIB_RADIUS_MM
}

/// Pseudo-noise in [−PHANTOM_NOISE_HU, PHANTOM_NOISE_HU] from a hash (SplitMix64) of the voxel index.
fn pseudo_noise(index: u64) -> i32 {
    let mut hash = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    hash ^= hash >> 31;
    let span = (2 * PHANTOM_NOISE_HU + 1) as u64;
    (hash % span) as i32 - PHANTOM_NOISE_HU
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Reorientation;

    /// The phantom's value at the voxel nearest a world position (the affine is diagonal).
    fn value_at_world(volume: &Volume<i16>, world: [f64; 3]) -> i16 {
        let m = &volume.affine().0;
        let index: Vec<usize> = (0..3)
            .map(|axis| {
                let continuous = (world[axis] - m[axis][3]) / m[axis][axis];
                let rounded = continuous.round();
                assert!(rounded >= 0.0 && (rounded as usize) < volume.dims()[axis], "{world:?} is outside the grid");
                rounded as usize
            })
            .collect();
        *volume.get(index[0], index[1], index[2])
    }

    #[test]
    fn grid_is_lps_with_the_specified_dims_and_spacing() {
        for spec in [PhantomSpec::small(), PhantomSpec::demo()] {
            let affine = phantom_affine(&spec);
            assert_eq!(affine.orientation_code().unwrap(), "LPS");
            assert_eq!(affine.spacing(), [spec.spacing_mm; 3]);
            // The field of view is centred on the world origin, so the translation is not zero.
            let centre = affine.apply(spec.dims.map(|d| (d as f64 - 1.0) / 2.0));
            assert!(centre.iter().all(|c| c.abs() < 1e-9), "centre {centre:?}");
            assert!(affine.0[0][3] > 0.0 && affine.0[1][3] > 0.0 && affine.0[2][3] < 0.0);
        }
        let small = synthetic_ct(&PhantomSpec::small());
        assert_eq!(small.dims(), [64, 54, 40]);
        assert_eq!(small.voxel_count(), 64 * 54 * 40);
        assert_eq!(small.affine(), &phantom_affine(&PhantomSpec::small()));
    }

    #[test]
    fn anatomy_is_where_the_world_coordinates_say() {
        let ct = synthetic_ct(&PhantomSpec::small());
        let noise = PHANTOM_NOISE_HU as i16;
        for lung in [landmarks::RIGHT_LUNG, landmarks::LEFT_LUNG] {
            assert!(value_at_world(&ct, lung) < -700, "lung at {lung:?}");
        }
        assert!(value_at_world(&ct, landmarks::VERTEBRAL_BODY) > 200);
        assert!((value_at_world(&ct, landmarks::LIVER) - PHANTOM_LIVER_HU).abs() <= noise);
        assert!((value_at_world(&ct, landmarks::SPINAL_CANAL) - PHANTOM_SPINAL_CANAL_HU).abs() <= noise);
        assert!(value_at_world(&ct, landmarks::STOMACH_GAS) < -950);
        assert!(value_at_world(&ct, landmarks::OUTSIDE) < -950);
        assert!((value_at_world(&ct, landmarks::MEDIASTINUM) - PHANTOM_SOFT_TISSUE_HU).abs() <= noise);
        // The liver is on the patient's right: positive RAS x, which the LPS grid stores at low i.
        assert_eq!(tissue_hounsfield(landmarks::LIVER), PHANTOM_LIVER_HU);
        assert_ne!(tissue_hounsfield([-60.0, 5.0, -50.0]), PHANTOM_LIVER_HU);
    }

    #[test]
    fn noiseless_anatomy_has_the_expected_values() {
        assert_eq!(tissue_hounsfield([0.0, 110.0, 0.0]), PHANTOM_AIR_HU);
        assert_eq!(tissue_hounsfield([0.0, 91.0, 0.0]), PHANTOM_FAT_HU);
        assert_eq!(tissue_hounsfield([62.0, 5.0, 50.0]), PHANTOM_VESSEL_HU);
        assert_eq!(tissue_hounsfield(landmarks::RIGHT_LUNG), PHANTOM_LUNG_HU);
        assert_eq!(tissue_hounsfield([0.0, -45.0, 2.0]), PHANTOM_DISC_HU);
        assert_eq!(tissue_hounsfield(landmarks::VERTEBRAL_BODY), PHANTOM_CANCELLOUS_BONE_HU);
        assert_eq!(tissue_hounsfield([0.0, -45.0 + 14.5, 15.0]), PHANTOM_CORTICAL_BONE_HU);
        assert_eq!(tissue_hounsfield([0.0, -70.0 - 9.5, 0.0]), PHANTOM_CORTICAL_BONE_HU);
        assert_eq!(tissue_hounsfield(landmarks::SPINAL_CANAL), PHANTOM_SPINAL_CANAL_HU);
        // A rib on the patient's right, lateral, at the second rib level.
        assert_eq!(tissue_hounsfield([112.0, 0.0, 17.0]), PHANTOM_RIB_HU);
        assert_eq!(tissue_hounsfield([-112.0, 0.0, 17.0]), PHANTOM_RIB_HU);
        // No rib in front of the sternum region or between rib levels.
        assert_ne!(tissue_hounsfield([0.0, 80.0, 17.0]), PHANTOM_RIB_HU);
        assert_ne!(tissue_hounsfield([112.0, 0.0, 28.0]), PHANTOM_RIB_HU);
    }

    #[test]
    fn noise_is_small_deterministic_and_not_flat() {
        let first = synthetic_ct(&PhantomSpec::small());
        let second = synthetic_ct(&PhantomSpec::small());
        assert_eq!(first, second);
        let noise: Vec<i32> = (0..1000).map(pseudo_noise).collect();
        assert!(noise.iter().all(|n| n.abs() <= PHANTOM_NOISE_HU));
        assert!(noise.iter().any(|&n| n > 5) && noise.iter().any(|&n| n < -5));
        let air_values: std::collections::BTreeSet<i16> =
            first.voxels().iter().copied().filter(|&v| v <= PHANTOM_AIR_HU + 10).collect();
        assert!(air_values.len() > 10, "air is not perfectly flat");
    }

    #[test]
    fn canonical_phantom_is_ras_with_the_lungs_superior_and_the_liver_on_the_right() {
        let ct = synthetic_ct(&PhantomSpec::small());
        let reorientation = Reorientation::to_canonical(ct.dims(), ct.affine()).unwrap();
        let canonical = reorientation.apply(&ct).unwrap();
        assert_eq!(canonical.affine().orientation_code().unwrap(), "RAS");
        assert_eq!(canonical.dims(), ct.dims());
        let [nx, ny, nz] = canonical.dims();
        // Lung voxels: mean superior-inferior index in the upper half; liver voxels: right half (high i).
        let (mut lung_k, mut lung_count, mut liver_i, mut liver_count) = (0usize, 0usize, 0usize, 0usize);
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let value = *canonical.get(i, j, k);
                    if (PHANTOM_LUNG_HU - 10..=PHANTOM_LUNG_HU + 10).contains(&value) {
                        lung_k += k;
                        lung_count += 1;
                    }
                    if (PHANTOM_LIVER_HU - 10..=PHANTOM_LIVER_HU + 10).contains(&value) {
                        liver_i += i;
                        liver_count += 1;
                    }
                }
            }
        }
        assert!(lung_count > 1000 && liver_count > 1000);
        assert!(lung_k / lung_count > nz / 2, "lungs are superior");
        assert!(liver_i / liver_count > nx / 2, "liver is on the patient's right (+x in RAS)");
    }

    #[test]
    fn degenerate_specs_do_not_panic() {
        let ct = synthetic_ct(&PhantomSpec { dims: [0, 3, 1], spacing_mm: f64::NAN });
        assert_eq!(ct.dims(), [1, 3, 1]);
        assert_eq!(ct.spacing(), [1.0; 3]);
    }
}
