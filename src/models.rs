//! `iris model …`: models for the segment service. Import an nnU-Net v2 trained-model folder or
//! TotalSegmentator's weights as iris models (ONNX + card, through nnU-Net's own code in its
//! Python venv), and put models into the object store, list them, remove them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use iris_core::config::IrisConfig;
use iris_nnunet::{ImportOptions, NnunetPython};
use iris_segment::ModelStore;

use crate::commands::{EXIT_FAILED, open_backends};

/// `iris model import nnunet FOLDER`: the model is written to `out/<name>/`, and pushed when asked.
pub async fn import_nnunet(
    config: &IrisConfig,
    folder: &Path,
    out: &Path,
    options: &ImportOptions,
    push: bool,
) -> anyhow::Result<ExitCode> {
    let python = match NnunetPython::locate() {
        Ok(python) => python,
        Err(error) => return refused(&error),
    };
    let (folder, out, options_owned) = (folder.to_owned(), out.to_owned(), options.clone());
    let imported =
        match tokio::task::spawn_blocking(move || iris_nnunet::import_nnunet(&folder, &out, &options_owned, &python))
            .await?
        {
            Ok(imported) => imported,
            Err(error) => return refused(&error),
        };
    let facts = &imported.facts;
    println!(
        "imported {} ({} labels, spacing {:?} mm, patch {:?}, mirror axes {:?}, folds {}) → {}",
        imported.card.name,
        imported.card.labels.len(),
        facts.spacing_zyx,
        facts.patch_size_zyx,
        facts.mirror_axes_zyx,
        facts.folds.join(","),
        imported.dir.display()
    );
    if let Some(difference) = facts.check.max_abs_difference {
        println!("  ONNX against torch on a random tile: largest difference {difference:.2e}");
    }
    if push {
        push_paths(config, &[imported.dir], None).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `iris model import totalsegmentator WEIGHTS`: TotalSegmentator's `total` task into `out/`.
pub async fn import_totalsegmentator(
    config: &IrisConfig,
    weights: &Path,
    out: &Path,
    push: bool,
) -> anyhow::Result<ExitCode> {
    let python = match NnunetPython::locate() {
        Ok(python) => python,
        Err(error) => return refused(&error),
    };
    let (weights, out) = (weights.to_owned(), out.to_owned());
    let imported =
        match tokio::task::spawn_blocking(move || iris_nnunet::import_totalsegmentator(&weights, &out, &python)).await?
        {
            Ok(imported) => imported,
            Err(error) => return refused(&error),
        };
    for model in &imported.models {
        println!("imported {} ({} labels) → {}", model.card.name, model.card.labels.len(), model.dir.display());
    }
    println!(
        "task {} ({} classes, {} models{}) → {}",
        imported.task.name,
        imported.task.labels.len(),
        imported.task.models.len(),
        if imported.task.fast_models.is_empty() { ", no fast mode" } else { ", fast mode" },
        imported.dir.display()
    );
    if push {
        let mut paths: Vec<PathBuf> = imported.models.iter().map(|model| model.dir.clone()).collect();
        paths.push(imported.dir);
        push_paths(config, &paths, None).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `iris model push PATH…`: each model or task folder (or a folder of them) into the store.
pub async fn push(config: &IrisConfig, paths: &[PathBuf], name: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut folders = Vec::new();
    for path in paths {
        if path.join("card.json").is_file() || path.join("task.json").is_file() {
            folders.push(path.clone());
            continue;
        }
        let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{} is neither a model, a task nor a folder of them", path.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("card.json").is_file() || path.join("task.json").is_file())
            .collect();
        anyhow::ensure!(!inside.is_empty(), "{} holds no model (card.json) or task (task.json)", path.display());
        inside.sort();
        folders.extend(inside);
    }
    anyhow::ensure!(name.is_none() || folders.len() == 1, "--name names one model; {} were given", folders.len());
    push_paths(config, &folders, name).await
}

async fn push_paths(config: &IrisConfig, folders: &[PathBuf], name: Option<&str>) -> anyhow::Result<ExitCode> {
    let store = model_store(config).await?;
    // Models before tasks, so a task never names a model that is not there yet.
    let (tasks, models): (Vec<&PathBuf>, Vec<&PathBuf>) =
        folders.iter().partition(|path| path.join("task.json").is_file());
    for folder in models.into_iter().chain(tasks) {
        match store.push(folder, name).await {
            Ok(pushed) => println!("pushed {pushed} (models/{pushed}/)"),
            Err(error) => {
                eprintln!("error [{}]: {}: {error}", error.code(), folder.display());
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `iris model list`: the models and tasks in the store.
pub async fn list(config: &IrisConfig, json: bool) -> anyhow::Result<ExitCode> {
    let models = model_store(config).await?.list().await?;
    if json {
        let rows: Vec<serde_json::Value> = models
            .iter()
            .map(|model| {
                serde_json::json!({"name": model.name, "kind": model.kind, "onnxSha256": model.onnx_sha256, "files": model.files})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if models.is_empty() {
        println!("no models in the store (iris model push DIR)");
    } else {
        for model in &models {
            let bytes: u64 = model.files.values().sum();
            let kind = model.kind.as_deref().unwrap_or("no card.json or task.json");
            println!("{:<28} {:<32} {:>10} bytes", model.name, kind, bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `iris model rm NAME`: removes `models/NAME/` from the store.
pub async fn remove(config: &IrisConfig, name: &str) -> anyhow::Result<ExitCode> {
    let removed = model_store(config).await?.remove(name).await?;
    if removed == 0 {
        eprintln!("no model named {name} in the store");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    println!("removed {name} ({removed} objects)");
    Ok(ExitCode::SUCCESS)
}

async fn model_store(config: &IrisConfig) -> anyhow::Result<ModelStore> {
    let backends = open_backends(config).await?;
    Ok(ModelStore::new(Arc::clone(&backends.objects), config.segment.model_cache_dir.clone()))
}

fn refused(error: &iris_nnunet::ImportError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {error}");
    Ok(ExitCode::from(EXIT_FAILED))
}
