//! nnU-Net v2 trained models, and TotalSegmentator's weights, imported as iris models: a
//! `model.onnx` exported by nnU-Net's own code and a `card.json` derived from what nnU-Net's own
//! classes read from the model's plans and dataset (spacing, patch, CT normalisation, labels,
//! mirror axes). The export runs in Python (torch and nnunetv2, in the venv
//! `scripts/nnunet-env.sh` installs); the scripts are part of this crate (`python/`), so an
//! installed `iris` carries them. No service ever needs Python: they run the ONNX file.
//!
//! - [`import_nnunet`]: one trained-model folder (`dataset.json`, `plans.json`,
//!   `fold_*/checkpoint_final.pth`; one fold, or several averaged as nnU-Net's predictor does);
//! - [`import_totalsegmentator`]: TotalSegmentator's `total` task from its weights folder: the five
//!   1.5 mm parts and the 3 mm fast model, with the task that merges them.

mod card;
mod python;
mod totalsegmentator;

use std::path::{Path, PathBuf};

use iris_segment::card::{CardError, ModelCard};
use iris_segment::sliding_window::Resampling;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use card::card_json;
pub use python::NnunetPython;
pub use totalsegmentator::{ImportedTask, TOTALSEGMENTATOR_TEMPLATE, import_totalsegmentator};

/// How a model is imported.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// The model's name in the store; default: from the dataset's name (`Dataset901_Liver` →
    /// `dataset901-liver`).
    pub name: Option<String>,
    /// The folds to export (averaged when several); default: every `fold_*` with a checkpoint.
    pub folds: Option<Vec<String>>,
    pub checkpoint: String,
    /// nnU-Net's `tile_step_size` (its default 0.5; TotalSegmentator's 0.8).
    pub tile_step: f64,
    /// Tiles per network run.
    pub batch_size: usize,
    /// The resampling chain the model expects around it (TotalSegmentator's for its models).
    pub resampling: Resampling,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            name: None,
            folds: None,
            checkpoint: "checkpoint_final.pth".to_owned(),
            tile_step: 0.5,
            batch_size: 1,
            resampling: Resampling::HalfPixel,
        }
    }
}

/// What nnU-Net's own classes say of an exported model (the exporter's `nnunet.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NnunetFacts {
    pub trainer: String,
    pub configuration: String,
    pub folds: Vec<String>,
    pub checkpoint: String,
    pub dataset_name: String,
    pub plans_name: String,
    pub input_channels: usize,
    pub channel_names: Vec<String>,
    pub normalization_schemes: Vec<String>,
    pub intensity_properties: Option<IntensityProperties>,
    pub patch_size_zyx: [usize; 3],
    pub spacing_zyx: [f64; 3],
    pub transpose_forward: [usize; 3],
    pub mirror_axes_zyx: Vec<usize>,
    /// Output channel → label name, background included.
    pub labels: std::collections::BTreeMap<String, String>,
    pub outputs: usize,
    pub opset: u32,
    pub torch: String,
    pub nnunetv2: Option<String>,
    pub check: ExportCheck,
}

/// nnU-Net's `foreground_intensity_properties_per_channel` of the CT channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntensityProperties {
    pub mean: f64,
    pub std: f64,
    pub percentile_00_5: f64,
    pub percentile_99_5: f64,
}

/// The exporter's own check: the ONNX graph against torch on one random tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportCheck {
    pub by: Option<String>,
    pub max_abs_difference: Option<f64>,
}

/// An imported model: `dir` holds `model.onnx`, `card.json` and `nnunet.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedModel {
    pub dir: PathBuf,
    pub card: ModelCard,
    pub facts: NnunetFacts,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "nnU-Net's Python environment is missing ({0}): run `scripts/nnunet-env.sh install` or set IRIS_NNUNET_PYTHON"
    )]
    NoPython(String),
    #[error("{0}")]
    Refused(String),
    #[error("the export failed: {0}")]
    Export(String),
    #[error("{what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("the derived card is invalid: {0}")]
    Card(#[from] CardError),
    #[error("{0}")]
    Layout(String),
}

/// Imports one nnU-Net trained-model folder into `out_root/<name>/`.
pub fn import_nnunet(
    model_folder: &Path,
    out_root: &Path,
    options: &ImportOptions,
    python: &NnunetPython,
) -> Result<ImportedModel, ImportError> {
    if !model_folder.join("plans.json").is_file() || !model_folder.join("dataset.json").is_file() {
        return Err(ImportError::Layout(format!(
            "{} is not an nnU-Net trained-model folder (dataset.json, plans.json, fold_*/{})",
            model_folder.display(),
            options.checkpoint
        )));
    }
    let work = tempfile::tempdir_in(ensure_dir(out_root)?).map_err(|error| ImportError::Io {
        what: "cannot create a working folder in",
        path: out_root.to_owned(),
        error,
    })?;
    let onnx = work.path().join("model.onnx");
    let facts_path = work.path().join("nnunet.json");
    let facts = python.export(model_folder, &onnx, &facts_path, options)?;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => name_of_dataset(&facts.dataset_name),
    };
    let bytes =
        std::fs::read(&onnx).map_err(|error| ImportError::Io { what: "cannot read", path: onnx.clone(), error })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let card = card_json(&facts, &name, &sha256, options)?;
    let card_bytes = serde_json::to_vec_pretty(&card).map_err(|e| ImportError::Export(e.to_string()))?;
    let parsed = ModelCard::parse(&name, &card_bytes)?;
    std::fs::write(work.path().join("card.json"), [card_bytes.as_slice(), b"\n"].concat())
        .map_err(|error| ImportError::Io { what: "cannot write", path: work.path().join("card.json"), error })?;
    let dir = out_root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|error| ImportError::Io {
            what: "cannot replace",
            path: dir.clone(),
            error,
        })?;
    }
    let kept = work.keep();
    std::fs::rename(&kept, &dir).map_err(|error| ImportError::Io {
        what: "cannot move the model to",
        path: dir.clone(),
        error,
    })?;
    Ok(ImportedModel { dir, card: parsed, facts })
}

/// A store name from an nnU-Net dataset name: lowercase, `_` → `-`.
pub fn name_of_dataset(dataset: &str) -> String {
    dataset
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_owned()
}

fn ensure_dir(dir: &Path) -> Result<&Path, ImportError> {
    std::fs::create_dir_all(dir).map_err(|error| ImportError::Io {
        what: "cannot create",
        path: dir.to_owned(),
        error,
    })?;
    Ok(dir)
}
