//! Model cards (`models/<name>/card.json`) and tasks (`models/<name>/task.json`), as
//! `docs/segmentation.md` defines them. Parsing validates everything the sliding window relies
//! on, so a [`ModelCard`] or [`TaskDefinition`] that exists is usable.

use std::collections::BTreeMap;

use iris_core::labels::{LabelDescription, LabelTable, fallback_label};
use serde::Deserialize;

use crate::sliding_window::{CtNormalization, Resampling, WindowSettings};

pub const CARD_FORMAT_VERSION: u32 = 1;
pub const TASK_FORMAT_VERSION: u32 = 1;
/// Label ids are stored as 8-bit voxels, background 0.
pub const MAX_LABEL_ID: u16 = 255;

/// A validated model card.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub name: String,
    pub description: String,
    pub onnx_sha256: String,
    pub window: WindowSettings,
    /// Local label id → name (ids 1..channels).
    pub labels: BTreeMap<u8, String>,
    pub ct_only: bool,
    pub diagnostic: bool,
}

/// A validated task: models whose local labels are remapped into one label table.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDefinition {
    pub name: String,
    pub description: String,
    pub labels: Vec<LabelDescription>,
    pub models: Vec<TaskModel>,
    /// Run instead of `models` when the job asks for `fast=true`; empty when the task has none.
    pub fast_models: Vec<TaskModel>,
}

/// One model of a task and how its local labels map to the task's; `None` maps by name once the
/// model's card is known (see [`TaskModel::resolved_label_map`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskModel {
    pub model: String,
    pub label_map: Option<BTreeMap<u8, u8>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file} of model '{name}' is invalid: {reason}")]
pub struct CardError {
    pub name: String,
    pub file: &'static str,
    pub reason: String,
}

impl ModelCard {
    /// Parses and validates `card.json` of the model stored as `name`.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<ModelCard, CardError> {
        let invalid = |reason: String| CardError { name: name.to_owned(), file: "card.json", reason };
        let raw: RawCard = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if raw.format_version != CARD_FORMAT_VERSION {
            return Err(invalid(format!("format_version {} is not {CARD_FORMAT_VERSION}", raw.format_version)));
        }
        if raw.axis_order != "zyx" {
            return Err(invalid(format!("axis_order '{}' is not supported (only \"zyx\")", raw.axis_order)));
        }
        if raw.onnx_sha256.len() != 64 || !raw.onnx_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("onnx_sha256 must be 64 hexadecimal digits".to_owned()));
        }
        if raw.spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(invalid(format!("spacing_mm {:?} must be positive", raw.spacing_mm)));
        }
        if raw.patch_size.iter().any(|p| *p == 0 || *p > 1024) {
            return Err(invalid(format!("patch_size {:?} must be between 1 and 1024", raw.patch_size)));
        }
        if raw.tile_step.is_nan() || raw.tile_step <= 0.0 || raw.tile_step > 1.0 {
            return Err(invalid(format!("tile_step {} must be in (0, 1]", raw.tile_step)));
        }
        let mut mirror_axes = raw.mirror_axes.clone();
        mirror_axes.sort_unstable();
        mirror_axes.dedup();
        if mirror_axes.len() != raw.mirror_axes.len() || mirror_axes.iter().any(|a| *a > 2) {
            return Err(invalid(format!("mirror_axes {:?} must be distinct axes 0, 1 or 2", raw.mirror_axes)));
        }
        if raw.batch_size == 0 || raw.batch_size > 64 {
            return Err(invalid(format!("batch_size {} must be between 1 and 64", raw.batch_size)));
        }
        let norm = &raw.normalization;
        if norm.scheme != "ct" {
            return Err(invalid(format!("normalization scheme '{}' is not supported (only \"ct\")", norm.scheme)));
        }
        let usable =
            norm.clip_hu[0] < norm.clip_hu[1] && norm.mean.is_finite() && norm.std > 0.0 && norm.std.is_finite();
        if !usable {
            return Err(invalid("normalization needs clip_hu [low, high] with low < high and std > 0".to_owned()));
        }
        let resampling = match raw.resampling.as_deref() {
            None => Resampling::default(),
            Some(text) => Resampling::parse(text).ok_or_else(|| {
                invalid(format!(
                    "resampling '{text}' is not supported (\"{}\" or \"{}\")",
                    Resampling::HalfPixel.as_str(),
                    Resampling::TotalSegmentator.as_str()
                ))
            })?,
        };
        let labels = label_names(&raw.labels).map_err(invalid)?;
        let channels = usize::from(*labels.keys().next_back().unwrap_or(&0)) + 1;
        if channels < 2 {
            return Err(invalid("labels must name at least one label besides background".to_owned()));
        }
        Ok(ModelCard {
            name: name.to_owned(),
            description: raw.description,
            onnx_sha256: raw.onnx_sha256.to_ascii_lowercase(),
            window: WindowSettings {
                spacing_mm: raw.spacing_mm,
                patch: raw.patch_size,
                tile_step: raw.tile_step,
                mirror_axes: raw.mirror_axes,
                batch_size: raw.batch_size,
                batch_is_fixed: false,
                channels,
                normalization: CtNormalization {
                    clip_low: norm.clip_hu[0],
                    clip_high: norm.clip_hu[1],
                    mean: norm.mean,
                    std: norm.std,
                },
                resampling,
            },
            labels,
            ct_only: raw.ct_only,
            diagnostic: raw.diagnostic,
        })
    }

    /// The task a single model forms on its own: its labels, identity mapping, default colours.
    pub fn as_task(&self) -> TaskDefinition {
        TaskDefinition {
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self
                .labels
                .iter()
                .map(|(id, name)| LabelDescription { name: name.clone(), ..fallback_label(u16::from(*id)) })
                .collect(),
            models: vec![TaskModel {
                model: self.name.clone(),
                label_map: Some(self.labels.keys().map(|id| (*id, *id)).collect()),
            }],
            fast_models: Vec::new(),
        }
    }
}

impl TaskDefinition {
    /// Parses and validates `task.json` of the task stored as `name`.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<TaskDefinition, CardError> {
        let invalid = |reason: String| CardError { name: name.to_owned(), file: "task.json", reason };
        let raw: RawTask = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if raw.format_version != TASK_FORMAT_VERSION {
            return Err(invalid(format!("format_version {} is not {TASK_FORMAT_VERSION}", raw.format_version)));
        }
        let names =
            label_names(&raw.labels.iter().map(|l| RawLabel { id: l.id, name: l.name.clone() }).collect::<Vec<_>>())
                .map_err(invalid)?;
        if raw.models.is_empty() {
            return Err(invalid("models must list at least one model".to_owned()));
        }
        let convert = |models: Vec<RawTaskModel>| -> Result<Vec<TaskModel>, CardError> {
            models
                .into_iter()
                .map(|model| {
                    let label_map = match model.label_map {
                        None => None,
                        Some(map) => Some(
                            map.into_iter()
                                .map(|(local, task)| {
                                    let local: u8 = local.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                                        invalid(format!(
                                            "label_map key '{local}' of model '{}' is not an id 1..255",
                                            model.model
                                        ))
                                    })?;
                                    if !names.contains_key(&task) {
                                        return Err(invalid(format!(
                                            "label_map of model '{}' maps {local} to {task}, which is not in labels",
                                            model.model
                                        )));
                                    }
                                    Ok((local, task))
                                })
                                .collect::<Result<BTreeMap<u8, u8>, CardError>>()?,
                        ),
                    };
                    Ok(TaskModel { model: model.model, label_map })
                })
                .collect()
        };
        Ok(TaskDefinition {
            name: name.to_owned(),
            description: raw.description,
            labels: raw
                .labels
                .into_iter()
                .map(|label| {
                    let fallback = fallback_label(label.id);
                    LabelDescription { id: label.id, name: label.name, color: label.color.unwrap_or(fallback.color) }
                })
                .collect(),
            models: convert(raw.models)?,
            fast_models: convert(raw.fast_models)?,
        })
    }

    /// The task's label table, for statistics and meshes.
    pub fn label_table(&self, diagnostic: bool) -> LabelTable {
        LabelTable { model: self.name.clone(), diagnostic, labels: self.labels.clone() }
    }

    /// Task label id of a name, if the task has it.
    pub fn label_id(&self, name: &str) -> Option<u8> {
        self.labels.iter().find(|label| label.name == name).and_then(|label| u8::try_from(label.id).ok())
    }
}

impl TaskModel {
    /// Local id → task id: the explicit map, or labels of the same name.
    pub fn resolved_label_map(&self, card: &ModelCard, task: &TaskDefinition) -> BTreeMap<u8, u8> {
        match &self.label_map {
            Some(map) => map.clone(),
            None => card
                .labels
                .iter()
                .filter_map(|(local, name)| task.label_id(name).map(|task_id| (*local, task_id)))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    format_version: u32,
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    description: String,
    onnx_sha256: String,
    axis_order: String,
    spacing_mm: [f64; 3],
    patch_size: [usize; 3],
    tile_step: f64,
    #[serde(default)]
    mirror_axes: Vec<usize>,
    #[serde(default)]
    resampling: Option<String>,
    #[serde(default = "one")]
    batch_size: usize,
    normalization: RawNormalization,
    labels: Vec<RawLabel>,
    #[serde(default)]
    ct_only: bool,
    #[serde(default)]
    diagnostic: bool,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNormalization {
    scheme: String,
    clip_hu: [f64; 2],
    mean: f64,
    std: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    id: u16,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaskLabel {
    id: u16,
    name: String,
    #[serde(default)]
    color: Option<[u8; 3]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    format_version: u32,
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    description: String,
    labels: Vec<RawTaskLabel>,
    models: Vec<RawTaskModel>,
    #[serde(default)]
    fast_models: Vec<RawTaskModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaskModel {
    model: String,
    #[serde(default)]
    label_map: Option<BTreeMap<String, u8>>,
}

fn label_names(labels: &[RawLabel]) -> Result<BTreeMap<u8, String>, String> {
    let mut names = BTreeMap::new();
    for label in labels {
        let id = u8::try_from(label.id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("label id {} must be between 1 and {MAX_LABEL_ID}", label.id))?;
        if label.name.trim().is_empty() {
            return Err(format!("label {id} has no name"));
        }
        if names.insert(id, label.name.clone()).is_some() {
            return Err(format!("label id {id} appears twice"));
        }
    }
    Ok(names)
}
