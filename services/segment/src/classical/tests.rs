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

/// What each voxel of the abdominal phantom was drawn as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abdomen {
    Air,
    Table,
    Trunk,
    Arm,
    ArmBone,
    ArmMarrow,
    Spine,
    SpineMarrow,
    ContrastAorta,
    ContrastKidney,
    Gas,
}

const ABDOMEN_DIMS: [usize; 3] = [96, 64, 24];
const ABDOMEN_SPACING: [f64; 3] = [2.0, 2.0, 3.0];

/// An abdomen in a contrast phase with the arms down beside it (apart from the trunk, as on a
/// table; their humeri with fatty marrow), an enhanced aorta and kidney (uniform 240–320 HU), bowel gas reading −945 HU (a scanner
/// whose air is not exactly −1000), and a thin table shell below.
fn abdomen_at(p: [f64; 3]) -> Abdomen {
    let [x, y, z] = p;
    if (-50.0..=-48.0).contains(&y) && x.abs() <= 90.0 {
        return Abdomen::Table;
    }
    for side in [-1.0, 1.0] {
        let from_arm = (x - side * 80.0).hypot(y);
        if from_arm <= 4.0 {
            return Abdomen::ArmMarrow;
        }
        if from_arm <= 7.0 {
            return Abdomen::ArmBone;
        }
        if from_arm <= 14.0 {
            return Abdomen::Arm;
        }
    }
    if (x / 60.0).powi(2) + (y / 40.0).powi(2) > 1.0 {
        return Abdomen::Air;
    }
    let from_spine = x.hypot(y + 25.0);
    if from_spine <= 6.0 {
        return Abdomen::SpineMarrow;
    }
    if from_spine <= 10.0 {
        return Abdomen::Spine;
    }
    if (x + 14.0).hypot(y + 6.0) <= 8.0 {
        return Abdomen::ContrastAorta;
    }
    if ((x - 32.0) / 12.0).powi(2) + ((y + 14.0) / 9.0).powi(2) + (z / 24.0).powi(2) <= 1.0 {
        return Abdomen::ContrastKidney;
    }
    if ((x - 15.0) / 18.0).powi(2) + ((y - 20.0) / 12.0).powi(2) + (z / 30.0).powi(2) <= 1.0 {
        return Abdomen::Gas;
    }
    Abdomen::Trunk
}

fn abdomen_hounsfield(drawn: Abdomen) -> i16 {
    match drawn {
        Abdomen::Air => -1000,
        Abdomen::Table => 250,
        Abdomen::Trunk | Abdomen::Arm => 40,
        Abdomen::ArmBone => 1100,
        Abdomen::ArmMarrow => -60,
        Abdomen::Spine => 700,
        Abdomen::SpineMarrow => 180,
        Abdomen::ContrastAorta => 320,
        Abdomen::ContrastKidney => 240,
        Abdomen::Gas => -945,
    }
}

/// The drawn class of every voxel and the CT, with ±40 HU of hashed noise (spread 23 HU).
fn synthetic_abdomen() -> (Vec<Abdomen>, Volume<i16>) {
    let mut drawn = Vec::new();
    let mut values = Vec::new();
    for k in 0..ABDOMEN_DIMS[2] {
        for j in 0..ABDOMEN_DIMS[1] {
            for i in 0..ABDOMEN_DIMS[0] {
                let p: Vec<f64> = [i, j, k]
                    .iter()
                    .enumerate()
                    .map(|(a, &n)| (n as f64 - (ABDOMEN_DIMS[a] as f64 - 1.0) / 2.0) * ABDOMEN_SPACING[a])
                    .collect();
                let class = abdomen_at([p[0], p[1], p[2]]);
                let hash = (drawn.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                let jitter = (hash % 81) as i32 - 40;
                let value = if class == Abdomen::Air { -1000 } else { i32::from(abdomen_hounsfield(class)) + jitter };
                drawn.push(class);
                values.push(value as i16);
            }
        }
    }
    let affine = Affine([
        [ABDOMEN_SPACING[0], 0.0, 0.0, 0.0],
        [0.0, ABDOMEN_SPACING[1], 0.0, 0.0],
        [0.0, 0.0, ABDOMEN_SPACING[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    (drawn, Volume::new(ABDOMEN_DIMS, affine, values).unwrap())
}

/// The failures of issue #23 on a contrast-enhanced abdominal CT with the arms down, drawn: the
/// arms are body and their bones bone although they do not touch the trunk; the enhanced aorta and
/// kidney are not bone; gas reading −960 HU is not lung; the table shell is neither body nor bone.
#[test]
fn arms_apart_from_the_trunk_contrast_and_gas_are_labelled_as_drawn() {
    let (drawn, ct) = synthetic_abdomen();
    let labels = segment_classical(&ct).unwrap();
    let fraction = |class: Abdomen, label: u8| {
        let of_class: Vec<usize> = (0..drawn.len()).filter(|&n| drawn[n] == class).collect();
        assert!(of_class.len() > 100, "{class:?} is drawn ({} voxels)", of_class.len());
        of_class.iter().filter(|&&n| labels[n] == label).count() as f64 / of_class.len() as f64
    };
    assert_eq!(fraction(Abdomen::Arm, BODY_LABEL), 1.0, "the arms' soft tissue is body");
    assert_eq!(fraction(Abdomen::ArmBone, BONE_LABEL), 1.0, "the arms' bones are bone");
    assert_eq!(fraction(Abdomen::ArmMarrow, BONE_LABEL), 1.0, "the arms' fatty marrow is bone");
    assert_eq!(fraction(Abdomen::Spine, BONE_LABEL), 1.0);
    assert_eq!(fraction(Abdomen::SpineMarrow, BONE_LABEL), 1.0);
    assert_eq!(fraction(Abdomen::ContrastAorta, BODY_LABEL), 1.0, "an enhanced aorta is not bone");
    assert_eq!(fraction(Abdomen::ContrastKidney, BODY_LABEL), 1.0, "an enhanced kidney is not bone");
    assert_eq!(fraction(Abdomen::Gas, BODY_LABEL), 1.0, "bowel gas is body, not lung");
    assert_eq!(fraction(Abdomen::Table, BACKGROUND_LABEL), 1.0, "the table is neither body nor bone");
    assert_eq!(fraction(Abdomen::Trunk, BODY_LABEL), 1.0);
    assert_eq!(count(&labels, LUNGS_LABEL), 0, "an abdomen without lungs has no lung label");
    // Nothing grows into the lumen or the kidney from the spine next to them: bone is exactly
    // the drawn bones plus at most a partial-volume rim (there is none in a drawn phantom).
    let drawn_bone = drawn
        .iter()
        .filter(|d| matches!(d, Abdomen::ArmBone | Abdomen::ArmMarrow | Abdomen::Spine | Abdomen::SpineMarrow))
        .count();
    assert_eq!(count(&labels, BONE_LABEL), drawn_bone);
}

/// The body-part rule on its own: a thick separate component is a body part, a thin or small one
/// (a table shell, a cable) is not.
#[test]
fn separate_body_parts_must_be_large_and_thick() {
    assert!(super::is_separate_body_part(400.0, 30.0), "an arm");
    assert!(!super::is_separate_body_part(400.0, 4.0), "a table shell 8 mm thick");
    assert!(!super::is_separate_body_part(2.0, 12.0), "a small object");
}

/// A table shell lying against the patient (no air or foam between them) joins the body's
/// candidates; it is cut off as a thin attachment, so beyond the contact it is neither body nor
/// bone, while the body keeps its own surface.
#[test]
fn a_table_touching_the_patient_is_cut_off() {
    let dims = [96, 64, 16];
    let spacing = [2.0, 2.0, 3.0];
    let mut values = Vec::new();
    let mut drawn = Vec::new();
    for _ in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let x = (i as f64 - 47.5) * spacing[0];
                let y = (j as f64 - 31.5) * spacing[1];
                let class = if (x / 60.0).powi(2) + (y / 40.0).powi(2) <= 1.0 {
                    Abdomen::Trunk
                } else if (-46.0..=-40.0).contains(&y) && x.abs() <= 90.0 {
                    Abdomen::Table
                } else {
                    Abdomen::Air
                };
                drawn.push(class);
                values.push(abdomen_hounsfield(class));
            }
        }
    }
    let affine = Affine([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
    let ct = Volume::new(dims, affine, values).unwrap();
    let labels = segment_classical(&ct).unwrap();
    let table_beyond_contact: Vec<usize> = (0..drawn.len())
        .filter(|&n| drawn[n] == Abdomen::Table && ((n % dims[0]) as f64 - 47.5).abs() * 2.0 > 40.0)
        .collect();
    assert!(table_beyond_contact.len() > 1000);
    assert!(
        table_beyond_contact.iter().all(|&n| labels[n] == BACKGROUND_LABEL),
        "the table beyond the contact is background"
    );
    let trunk = (0..drawn.len()).filter(|&n| drawn[n] == Abdomen::Trunk);
    assert!(trunk.clone().all(|n| labels[n] == BODY_LABEL), "the trunk keeps all of its voxels");
}
