//! `iris-dev eval classical`: the built-in classical model (`classical-ct-v1`) against
//! TotalSegmentator's label map of the same CT. Each CT goes through ingest exactly as an upload
//! would (a DICOM directory is zipped in memory first), the reference through the same
//! reorientation, so both lie on the canonical grid; the two grids must agree.
//!
//! For each case it prints the Dice of lungs (the five lobes) and bone (the classes of
//! [`classical_counterpart_of_totalsegmentator_class`]) and, to show where the model goes wrong,
//! the reference classes our bone and lungs cover wrongly and the ones they miss.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use iris_ingest::{IngestLimits, ingest_upload};
use iris_segment::classical::{BONE_LABEL, LUNGS_LABEL, classical_counterpart_of_totalsegmentator_class};
use iris_segment::segment_classical;
use iris_volume::Volume;

/// Voxel counts of one class in ours, in the reference, and in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    pub both: u64,
    pub ours: u64,
    pub reference: u64,
}

impl Overlap {
    /// Dice coefficient, or `None` where neither side has the class.
    pub fn dice(&self) -> Option<f64> {
        let total = self.ours + self.reference;
        (total > 0).then(|| 2.0 * self.both as f64 / total as f64)
    }
}

/// The comparison of one CT.
#[derive(Debug, Clone)]
pub struct ClassicalEvaluation {
    pub case: String,
    pub lungs: Overlap,
    pub bone: Overlap,
    /// Reference class name → voxels we call bone there although the reference has no bone.
    pub bone_extra: BTreeMap<String, u64>,
    /// Reference bone class name → voxels of it we did not call bone.
    pub bone_missed: BTreeMap<String, u64>,
    pub lungs_extra: BTreeMap<String, u64>,
    pub lungs_missed: BTreeMap<String, u64>,
}

/// TotalSegmentator's class names by id, from its `total_labels.json` (`{"labels": [{"id", "name"}]}`).
pub fn read_class_names(path: &Path) -> anyhow::Result<BTreeMap<i16, String>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: serde_json::Value = serde_json::from_slice(&text)?;
    let labels = table["labels"].as_array().context("the label table has no \"labels\" array")?;
    let mut names = BTreeMap::new();
    for label in labels {
        let id = label["id"].as_i64().context("a label without an id")?;
        let name = label["name"].as_str().context("a label without a name")?;
        names.insert(i16::try_from(id)?, name.to_owned());
    }
    Ok(names)
}

/// Reads a CT (a NIfTI file, a DICOM file or zip, or a directory of DICOM files) through ingest.
pub fn read_ct(path: &Path) -> anyhow::Result<Volume<i16>> {
    let limits = IngestLimits { max_upload_bytes: u64::MAX, max_voxels: 1 << 31 };
    let (bytes, name) = if path.is_dir() {
        (zip_directory(path)?, "series.zip".to_owned())
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).context("the CT path has no file name")?.to_owned();
        (std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?, name)
    };
    Ok(ingest_upload(bytes, &name, &limits).with_context(|| format!("ingest refused {}", path.display()))?.canonical)
}

fn zip_directory(directory: &Path) -> anyhow::Result<Vec<u8>> {
    let mut entries: Vec<_> = std::fs::read_dir(directory)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for entry in entries.iter().filter(|entry| entry.path().is_file()) {
        writer.start_file(entry.file_name().to_string_lossy(), options)?;
        writer.write_all(&std::fs::read(entry.path())?)?;
    }
    Ok(writer.finish()?.into_inner())
}

/// Runs the classical model on `ct` and compares it with `reference` (same grid after ingest).
pub fn evaluate(
    case: &str,
    ct: &Volume<i16>,
    reference: &Volume<i16>,
    names: &BTreeMap<i16, String>,
) -> anyhow::Result<ClassicalEvaluation> {
    if ct.dims() != reference.dims() {
        bail!("{case}: the CT is {:?} voxels, the reference {:?}", ct.dims(), reference.dims());
    }
    let worst_affine_difference = (0..3)
        .flat_map(|row| (0..4).map(move |column| (row, column)))
        .map(|(row, column)| (ct.affine().0[row][column] - reference.affine().0[row][column]).abs())
        .fold(0.0f64, f64::max);
    if worst_affine_difference > 1e-2 {
        bail!("{case}: the CT and the reference are not on one grid (affines differ by {worst_affine_difference} mm)");
    }
    let labels = segment_classical(ct)?;
    let name_of = |id: i16| {
        names.get(&id).cloned().unwrap_or_else(|| if id == 0 { "unlabelled".into() } else { format!("class {id}") })
    };
    let counterpart = |id: i16| names.get(&id).and_then(|name| classical_counterpart_of_totalsegmentator_class(name));
    let mut evaluation = ClassicalEvaluation {
        case: case.to_owned(),
        lungs: Overlap::default(),
        bone: Overlap::default(),
        bone_extra: BTreeMap::new(),
        bone_missed: BTreeMap::new(),
        lungs_extra: BTreeMap::new(),
        lungs_missed: BTreeMap::new(),
    };
    let counterparts: BTreeMap<i16, Option<u8>> = names.keys().map(|&id| (id, counterpart(id))).collect();
    for (&ours, &truth) in labels.iter().zip(reference.voxels()) {
        let theirs = counterparts.get(&truth).copied().flatten();
        for (label, overlap, extra, missed) in [
            (BONE_LABEL, &mut evaluation.bone, &mut evaluation.bone_extra, &mut evaluation.bone_missed),
            (LUNGS_LABEL, &mut evaluation.lungs, &mut evaluation.lungs_extra, &mut evaluation.lungs_missed),
        ] {
            let (a, b) = (ours == label, theirs == Some(label));
            overlap.both += u64::from(a && b);
            overlap.ours += u64::from(a);
            overlap.reference += u64::from(b);
            if a && !b {
                *extra.entry(name_of(truth)).or_default() += 1;
            } else if b && !a {
                *missed.entry(name_of(truth)).or_default() += 1;
            }
        }
    }
    Ok(evaluation)
}

fn largest(counts: &BTreeMap<String, u64>, how_many: usize) -> String {
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = sorted.iter().take(how_many).map(|(name, count)| format!("{name} {count}")).collect();
    if shown.is_empty() { "–".to_owned() } else { shown.join(", ") }
}

fn dice_text(overlap: &Overlap) -> String {
    overlap.dice().map_or_else(|| "no such class".to_owned(), |dice| format!("{dice:.3}"))
}

/// A Markdown table of the cases: Dice and the largest disagreements (in voxels).
pub fn to_markdown(evaluations: &[ClassicalEvaluation]) -> String {
    let mut text = String::from(
        "| case | lungs Dice | bone Dice | bone where the reference has none | reference bone we missed | lungs where the reference has none | reference lungs we missed |\n|---|---|---|---|---|---|---|\n",
    );
    for evaluation in evaluations {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            evaluation.case,
            dice_text(&evaluation.lungs),
            dice_text(&evaluation.bone),
            largest(&evaluation.bone_extra, 5),
            largest(&evaluation.bone_missed, 5),
            largest(&evaluation.lungs_extra, 3),
            largest(&evaluation.lungs_missed, 3),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use iris_volume::phantom::{PhantomSpec, synthetic_ct};
    use iris_volume::volume::Reorientation;

    fn names() -> BTreeMap<i16, String> {
        [(10, "lung_upper_lobe_left"), (30, "vertebrae_L1"), (52, "aorta")]
            .into_iter()
            .map(|(id, name)| (id, name.to_owned()))
            .collect()
    }

    /// The classical model's own labels, renamed into TotalSegmentator's ids, score Dice 1; moving
    /// some bone into a non-bone reference class shows up as bone the reference does not have.
    #[test]
    fn a_reference_equal_to_the_model_scores_one_and_differences_are_named() {
        let ct = synthetic_ct(&PhantomSpec::small());
        let ct = Reorientation::to_canonical(ct.dims(), ct.affine()).unwrap().apply(&ct).unwrap();
        let labels = segment_classical(&ct).unwrap();
        let as_reference = |bone_as: i16| -> Volume<i16> {
            let ids: Vec<i16> = labels
                .iter()
                .enumerate()
                .map(|(n, &label)| match label {
                    LUNGS_LABEL => 10,
                    BONE_LABEL if n % 2 == 0 => bone_as,
                    BONE_LABEL => 30,
                    _ => 0,
                })
                .collect();
            ct.with_voxels(ids).unwrap()
        };
        let same = evaluate("same", &ct, &as_reference(30), &names()).unwrap();
        assert_eq!(same.lungs.dice(), Some(1.0));
        assert_eq!(same.bone.dice(), Some(1.0));
        assert!(same.bone_extra.is_empty() && same.bone_missed.is_empty());
        let half = evaluate("half", &ct, &as_reference(52), &names()).unwrap();
        let aorta = half.bone_extra["aorta"];
        assert_eq!(aorta, labels.iter().enumerate().filter(|(n, l)| **l == BONE_LABEL && n % 2 == 0).count() as u64);
        assert!(half.bone.dice().unwrap() < 0.7);
        assert!(to_markdown(&[half]).contains("aorta"));
    }

    #[test]
    fn a_reference_on_another_grid_is_refused() {
        let ct = synthetic_ct(&PhantomSpec::small());
        let mut dims = ct.dims();
        dims[2] -= 1;
        let other = Volume::new(dims, *ct.affine(), vec![0i16; dims.iter().product()]).unwrap();
        let error = evaluate("other", &ct, &other, &names()).unwrap_err();
        assert!(error.to_string().contains("voxels"), "{error}");
        assert_eq!(Overlap::default().dice(), None);
    }
}
