//! TotalSegmentator's `total` task from its weights folder (`TOTALSEG_WEIGHTS_PATH`, by default
//! `~/.totalsegmentator/nnunet/results`): the five 1.5 mm parts (datasets 291–295) and the 3 mm fast
//! model (dataset 297), each imported as an nnU-Net model at TotalSegmentator's tile step 0.8, and
//! the task that merges them (iris's template, `services/segment/tasks/totalsegmentator/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iris_segment::card::TaskDefinition;
use iris_segment::sliding_window::Resampling;

use crate::{ImportError, ImportOptions, ImportedModel, NnunetPython, import_nnunet};

/// The task template: TotalSegmentator's 117 classes and each part's local ids.
pub const TOTALSEGMENTATOR_TEMPLATE: &str = include_str!("../../../services/segment/tasks/totalsegmentator/task.json");

/// The task's name in the store.
pub const TASK_NAME: &str = "total";

/// TotalSegmentator's tile step for the `total` task (its `nnunet.py`).
const TILE_STEP: f64 = 0.8;

/// Dataset id, TotalSegmentator's folder name, iris's model name, trainer.
const MODELS: [(u32, &str, &str, &str); 6] = [
    (291, "Dataset291_TotalSegmentator_part1_organs_1559subj", "totalseg-291-organs", "nnUNetTrainerNoMirroring"),
    (292, "Dataset292_TotalSegmentator_part2_vertebrae_1532subj", "totalseg-292-vertebrae", "nnUNetTrainerNoMirroring"),
    (293, "Dataset293_TotalSegmentator_part3_cardiac_1559subj", "totalseg-293-cardiac", "nnUNetTrainerNoMirroring"),
    (294, "Dataset294_TotalSegmentator_part4_muscles_1559subj", "totalseg-294-muscles", "nnUNetTrainerNoMirroring"),
    (295, "Dataset295_TotalSegmentator_part5_ribs_1559subj", "totalseg-295-ribs", "nnUNetTrainerNoMirroring"),
    (
        297,
        "Dataset297_TotalSegmentator_total_3mm_1559subj",
        "totalseg-297-fast",
        "nnUNetTrainer_4000epochs_NoMirroring",
    ),
];

/// The imported task: `dir` holds `task.json`; each model has its own folder beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedTask {
    pub dir: PathBuf,
    pub task: TaskDefinition,
    pub models: Vec<ImportedModel>,
}

/// Imports TotalSegmentator's `total` task from `weights` into `out_root/` (one folder per model
/// and `out_root/total/task.json`). The fast model is optional: without it the task has no fast mode.
pub fn import_totalsegmentator(
    weights: &Path,
    out_root: &Path,
    python: &NnunetPython,
) -> Result<ImportedTask, ImportError> {
    let template: serde_json::Value =
        serde_json::from_str(TOTALSEGMENTATOR_TEMPLATE).map_err(|e| ImportError::Layout(e.to_string()))?;
    let parsed = TaskDefinition::parse(TASK_NAME, TOTALSEGMENTATOR_TEMPLATE.as_bytes())?;
    let names: BTreeMap<u8, &str> =
        parsed.labels.iter().filter_map(|label| Some((u8::try_from(label.id).ok()?, label.name.as_str()))).collect();
    let maps: BTreeMap<&str, &BTreeMap<u8, u8>> = parsed
        .models
        .iter()
        .chain(&parsed.fast_models)
        .filter_map(|model| Some((model.model.as_str(), model.label_map.as_ref()?)))
        .collect();
    let mut models = Vec::new();
    for (id, folder, name, trainer) in MODELS {
        let Some(dataset) = dataset_folder(weights, id, folder)? else {
            if id == 297 {
                tracing::warn!("no Dataset297 (the 3 mm fast model) in the weights: the task will have no fast mode");
                continue;
            }
            return Err(ImportError::Layout(format!(
                "{} has no {folder} (TotalSegmentator's weights folder: TOTALSEG_WEIGHTS_PATH or ~/.totalsegmentator/nnunet/results)",
                weights.display()
            )));
        };
        let model_folder = trained_model_folder(&dataset, trainer)?;
        let options = ImportOptions {
            name: Some(name.to_owned()),
            folds: Some(vec!["0".to_owned()]),
            tile_step: TILE_STEP,
            resampling: Resampling::TotalSegmentator,
            ..ImportOptions::default()
        };
        let model = import_nnunet(&model_folder, out_root, &options, python)?;
        check_label_names(&model, maps.get(name).copied(), &names)?;
        models.push(model);
    }
    let mut task = template;
    if !models.iter().any(|model| model.card.name == "totalseg-297-fast") {
        task["fast_models"] = serde_json::Value::Array(Vec::new());
    }
    let bytes = serde_json::to_vec_pretty(&task).map_err(|e| ImportError::Layout(e.to_string()))?;
    let task = TaskDefinition::parse(TASK_NAME, &bytes)?;
    let dir = out_root.join(TASK_NAME);
    std::fs::create_dir_all(&dir).map_err(|error| ImportError::Io {
        what: "cannot create",
        path: dir.clone(),
        error,
    })?;
    std::fs::write(dir.join("task.json"), [bytes.as_slice(), b"\n"].concat()).map_err(|error| ImportError::Io {
        what: "cannot write",
        path: dir.join("task.json"),
        error,
    })?;
    Ok(ImportedTask { dir, task, models })
}

/// The dataset's folder: TotalSegmentator's own name, else the one folder named `Dataset<id>_…`.
fn dataset_folder(weights: &Path, id: u32, folder: &str) -> Result<Option<PathBuf>, ImportError> {
    let exact = weights.join(folder);
    if exact.is_dir() {
        return Ok(Some(exact));
    }
    let prefix = format!("Dataset{id}_");
    let entries = std::fs::read_dir(weights).map_err(|error| ImportError::Io {
        what: "cannot read",
        path: weights.to_owned(),
        error,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix) && entry.path().is_dir())
        .map(|entry| entry.path())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(ImportError::Layout(format!(
            "{} holds several Dataset{id}_ folders ({}); keep the one to import",
            weights.display(),
            found.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `<trainer>__nnUNetPlans__3d_fullres` in a dataset's folder, else its only `*__3d_fullres` folder.
fn trained_model_folder(dataset: &Path, trainer: &str) -> Result<PathBuf, ImportError> {
    let expected = dataset.join(format!("{trainer}__nnUNetPlans__3d_fullres"));
    if expected.is_dir() {
        return Ok(expected);
    }
    let entries = std::fs::read_dir(dataset).map_err(|error| ImportError::Io {
        what: "cannot read",
        path: dataset.to_owned(),
        error,
    })?;
    let found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with("__3d_fullres") && entry.path().is_dir())
        .map(|entry| entry.path())
        .collect();
    match found.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(ImportError::Layout(format!(
            "{} has no {}__nnUNetPlans__3d_fullres folder (or several 3d_fullres models)",
            dataset.display(),
            trainer
        ))),
    }
}

/// Each local label of the model is named as the task names the class it maps to.
fn check_label_names(
    model: &ImportedModel,
    label_map: Option<&BTreeMap<u8, u8>>,
    names: &BTreeMap<u8, &str>,
) -> Result<(), ImportError> {
    let Some(label_map) = label_map else {
        return Err(ImportError::Layout(format!("the task template has no model {}", model.card.name)));
    };
    for (local, task_id) in label_map {
        let expected = names.get(task_id).copied().unwrap_or("?");
        match model.card.labels.get(local) {
            Some(name) if name == expected => {}
            found => {
                return Err(ImportError::Refused(format!(
                    "{}: label {local} is {:?} in its dataset.json, TotalSegmentator's class {task_id} is {expected:?} \
                     (weights of another TotalSegmentator version?)",
                    model.card.name,
                    found.map(String::as_str).unwrap_or("missing")
                )));
            }
        }
    }
    Ok(())
}
