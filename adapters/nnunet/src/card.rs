//! A model card from what nnU-Net's classes read of a model: spacing and patch in the volume's
//! (z, y, x) order, CT normalisation exactly as nnU-Net's `CTNormalization` does it (clip to the
//! foreground's 0.5th and 99.5th percentiles, subtract the mean, divide by `max(std, 1e-8)`), the
//! labels of `dataset.json`, and the mirror axes the checkpoint allows at inference.

use serde_json::{Value, json};

use crate::{ImportError, ImportOptions, NnunetFacts};

/// nnU-Net's guard against a zero standard deviation (`CTNormalization`, float32 targets).
const NNUNET_STD_EPSILON: f64 = 1e-8;

/// The `card.json` of a model exported with `facts`, whose `model.onnx` has `onnx_sha256`.
pub fn card_json(
    facts: &NnunetFacts,
    name: &str,
    onnx_sha256: &str,
    options: &ImportOptions,
) -> Result<Value, ImportError> {
    if facts.input_channels != 1 {
        return Err(ImportError::Refused(format!(
            "the model takes {} input channels ({}); iris runs single-channel CT models",
            facts.input_channels,
            facts.channel_names.join(", ")
        )));
    }
    if facts.normalization_schemes != ["CTNormalization"] {
        return Err(ImportError::Refused(format!(
            "the model normalises its input with {:?}; iris runs CT models normalised with nnU-Net's CTNormalization",
            facts.normalization_schemes
        )));
    }
    let Some(intensity) = facts.intensity_properties else {
        return Err(ImportError::Refused(
            "plans.json has no foreground_intensity_properties_per_channel for channel 0".to_owned(),
        ));
    };
    let labels: Vec<Value> = facts
        .labels
        .iter()
        .filter_map(|(id, name)| id.parse::<u16>().ok().filter(|id| *id > 0).map(|id| (id, name)))
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    if labels.len() + 1 != facts.outputs {
        return Err(ImportError::Refused(format!(
            "the network has {} outputs but dataset.json names {} labels besides background",
            facts.outputs,
            labels.len()
        )));
    }
    let description = format!(
        "nnU-Net v2 model {} ({}, {}, {}, fold{} {}), exported with torch {} and nnunetv2 {}",
        facts.dataset_name,
        facts.trainer,
        facts.plans_name,
        facts.configuration,
        if facts.folds.len() == 1 { "" } else { "s averaged:" },
        facts.folds.join(", "),
        facts.torch,
        facts.nnunetv2.as_deref().unwrap_or("?")
    );
    Ok(json!({
        "format_version": iris_segment::card::CARD_FORMAT_VERSION,
        "name": name,
        "description": description,
        "onnx_sha256": onnx_sha256,
        "axis_order": "zyx",
        "spacing_mm": facts.spacing_zyx,
        "patch_size": facts.patch_size_zyx,
        "tile_step": options.tile_step,
        "mirror_axes": facts.mirror_axes_zyx,
        "resampling": options.resampling.as_str(),
        "batch_size": options.batch_size,
        "normalization": {
            "scheme": "ct",
            "clip_hu": [intensity.percentile_00_5, intensity.percentile_99_5],
            "mean": intensity.mean,
            "std": intensity.std.max(NNUNET_STD_EPSILON),
        },
        "labels": labels,
        "ct_only": true,
        "diagnostic": false,
    }))
}
