//! Models from the object store (`models/<name>/…`), checked against their card's sha256 and
//! cached on local disk by checksum, so each model is downloaded once per machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iris_core::ErrorCode;
use iris_core::keys::ObjectKey;
use iris_core::ports::{ObjectStore, PortError};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::card::{CardError, ModelCard, TaskDefinition};

/// Where models live in the object store: `models/<name>/`.
pub const MODELS_PREFIX: &str = "models/";

/// What an importer writes beside a model's card about where it came from (kept with the model).
pub const IMPORT_FACTS: &str = "nnunet.json";

/// A model or task in the store, as [`ModelStore::list`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub name: String,
    /// File name → size in bytes.
    pub files: BTreeMap<String, u64>,
    pub onnx_sha256: Option<String>,
    /// What it is ("model, 3 labels", "task of 5 models"), or why it is unusable; `None` for a
    /// folder with neither a card nor a task.
    pub kind: Option<String>,
}

/// A model ready to run: its card and the verified ONNX file on local disk.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalModel {
    pub card: ModelCard,
    pub onnx_path: PathBuf,
}

/// What a model name resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedModel {
    Task(TaskDefinition),
    Single(ModelCard),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error("model name '{0}' is invalid: use lowercase letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    #[error("no model or task named '{0}' in the object store (models/{0}/)")]
    NotFound(String),
    #[error("model '{name}' is corrupt: model.onnx has sha256 {actual}, its card says {expected}")]
    ChecksumMismatch { name: String, expected: String, actual: String },
    #[error("{0}")]
    Card(#[from] CardError),
    #[error("reading model '{name}' failed: {source}")]
    Store { name: String, source: PortError },
    #[error("the model cache at {path} failed: {message}")]
    Cache { path: PathBuf, message: String },
}

impl ModelStoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ModelStoreError::InvalidName(_) => ErrorCode::InvalidOption,
            ModelStoreError::NotFound(_) => ErrorCode::ModelNotFound,
            ModelStoreError::ChecksumMismatch { .. } => ErrorCode::ModelChecksumMismatch,
            ModelStoreError::Card(_) => ErrorCode::ModelCardInvalid,
            ModelStoreError::Store { .. } | ModelStoreError::Cache { .. } => ErrorCode::InternalError,
        }
    }

    /// Store outages and a full or unwritable disk may pass; everything else is the model's fault.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelStoreError::Store { source, .. } => source.is_retryable(),
            ModelStoreError::Cache { .. } => true,
            _ => false,
        }
    }
}

pub struct ModelStore {
    objects: Arc<dyn ObjectStore>,
    cache_dir: PathBuf,
}

impl ModelStore {
    pub fn new(objects: Arc<dyn ObjectStore>, cache_dir: PathBuf) -> ModelStore {
        ModelStore { objects, cache_dir }
    }

    /// Looks `name` up as a task, then as a single model; `Ok(None)` when neither exists.
    pub async fn resolve(&self, name: &str) -> Result<Option<ResolvedModel>, ModelStoreError> {
        check_name(name)?;
        if let Some(bytes) = self.get_if_present(name, "task.json").await? {
            return Ok(Some(ResolvedModel::Task(TaskDefinition::parse(name, &bytes)?)));
        }
        if let Some(bytes) = self.get_if_present(name, "card.json").await? {
            return Ok(Some(ResolvedModel::Single(ModelCard::parse(name, &bytes)?)));
        }
        Ok(None)
    }

    /// The card of `name` and its verified ONNX file, downloaded into the cache when not there yet.
    pub async fn fetch(&self, name: &str) -> Result<LocalModel, ModelStoreError> {
        check_name(name)?;
        let card_bytes =
            self.get_if_present(name, "card.json").await?.ok_or_else(|| ModelStoreError::NotFound(name.to_owned()))?;
        let card = ModelCard::parse(name, &card_bytes)?;
        let onnx_path = self.cache_dir.join(format!("{}.onnx", card.onnx_sha256));
        if onnx_path.is_file() {
            return Ok(LocalModel { card, onnx_path });
        }
        let bytes =
            self.get_if_present(name, "model.onnx").await?.ok_or_else(|| ModelStoreError::NotFound(name.to_owned()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != card.onnx_sha256 {
            return Err(ModelStoreError::ChecksumMismatch {
                name: name.to_owned(),
                expected: card.onnx_sha256.clone(),
                actual,
            });
        }
        write_atomically(&self.cache_dir, &onnx_path, &bytes)?;
        info!(model = name, bytes = bytes.len(), sha256 = %card.onnx_sha256, "model cached");
        Ok(LocalModel { card, onnx_path })
    }

    /// Every model of `names`, fetched once each.
    pub async fn fetch_all(&self, names: &[&str]) -> Result<BTreeMap<String, LocalModel>, ModelStoreError> {
        let mut models = BTreeMap::new();
        for name in names {
            if !models.contains_key(*name) {
                models.insert((*name).to_owned(), self.fetch(name).await?);
            }
        }
        Ok(models)
    }

    /// Puts a local model (`card.json` + `model.onnx`, checked against each other first) or task
    /// (`task.json`) into the store as `models/<name>/`. The card (or task) goes last, so a reader
    /// never finds a card without its network. Returns the name.
    pub async fn push(&self, dir: &Path, name: Option<&str>) -> Result<String, ModelStoreError> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => dir.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned(),
        };
        check_name(&name)?;
        let read = |file: &str| {
            std::fs::read(dir.join(file))
                .map_err(|error| ModelStoreError::Cache { path: dir.join(file), message: error.to_string() })
        };
        let files: Vec<(&str, Vec<u8>)> = if dir.join("task.json").is_file() {
            let task = read("task.json")?;
            TaskDefinition::parse(&name, &task)?;
            vec![("task.json", task)]
        } else {
            load_local_model(dir)?;
            let mut files = vec![("model.onnx", read("model.onnx")?)];
            if dir.join(IMPORT_FACTS).is_file() {
                files.push((IMPORT_FACTS, read(IMPORT_FACTS)?));
            }
            files.push(("card.json", read("card.json")?));
            files
        };
        for (file, bytes) in files {
            let key = model_key(&name, file)?;
            let size = bytes.len() as u64;
            let stored = self
                .objects
                .put(&key, bytes, &Default::default())
                .await
                .map_err(|source| ModelStoreError::Store { name: name.clone(), source })?;
            if stored.size != size {
                return Err(ModelStoreError::Store {
                    name: name.clone(),
                    source: PortError::Invalid {
                        backend: "object store",
                        message: format!("{key} was stored with {} bytes, not {size}", stored.size),
                    },
                });
            }
        }
        info!(model = %name, "model pushed");
        Ok(name)
    }

    /// Every model and task in the store, by name.
    pub async fn list(&self) -> Result<Vec<StoredModel>, ModelStoreError> {
        let objects = self
            .objects
            .list(MODELS_PREFIX)
            .await
            .map_err(|source| ModelStoreError::Store { name: "*".to_owned(), source })?;
        let mut models: BTreeMap<String, StoredModel> = BTreeMap::new();
        for object in objects {
            let Some((name, file)) =
                object.key.as_str().strip_prefix(MODELS_PREFIX).and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let entry = models.entry(name.to_owned()).or_insert_with(|| StoredModel {
                name: name.to_owned(),
                files: BTreeMap::new(),
                onnx_sha256: None,
                kind: None,
            });
            entry.files.insert(file.to_owned(), object.size);
        }
        for model in models.values_mut() {
            model.kind = match self.resolve(&model.name).await {
                Ok(Some(ResolvedModel::Task(task))) => Some(format!("task of {} models", task.models.len())),
                Ok(Some(ResolvedModel::Single(card))) => {
                    model.onnx_sha256 = Some(card.onnx_sha256.clone());
                    Some(format!("model, {} labels", card.labels.len()))
                }
                Ok(None) => None,
                Err(error) => Some(format!("unusable: {error}")),
            };
        }
        Ok(models.into_values().collect())
    }

    /// Removes `models/<name>/` whole; the number of objects removed (0: there was nothing).
    pub async fn remove(&self, name: &str) -> Result<usize, ModelStoreError> {
        check_name(name)?;
        let store = |source| ModelStoreError::Store { name: name.to_owned(), source };
        let objects = self.objects.list(&format!("{MODELS_PREFIX}{name}/")).await.map_err(store)?;
        for object in &objects {
            self.objects.delete(&object.key).await.map_err(store)?;
        }
        Ok(objects.len())
    }

    async fn get_if_present(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>, ModelStoreError> {
        let key = model_key(name, file)?;
        match self.objects.get(&key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(PortError::NotFound(_)) => Ok(None),
            Err(source) => Err(ModelStoreError::Store { name: name.to_owned(), source }),
        }
    }
}

/// A model from a local directory holding `card.json` and `model.onnx` (checked against the card);
/// the model's name is the directory's.
pub fn load_local_model(dir: &Path) -> Result<LocalModel, ModelStoreError> {
    let name = dir.file_name().and_then(|name| name.to_str()).unwrap_or("model").to_owned();
    let read = |file: &str| {
        std::fs::read(dir.join(file)).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => ModelStoreError::NotFound(dir.join(file).display().to_string()),
            _ => ModelStoreError::Cache { path: dir.join(file), message: error.to_string() },
        })
    };
    let card = ModelCard::parse(&name, &read("card.json")?)?;
    let onnx_path = dir.join("model.onnx");
    let actual = hex::encode(Sha256::digest(read("model.onnx")?));
    if actual != card.onnx_sha256 {
        return Err(ModelStoreError::ChecksumMismatch { name, expected: card.onnx_sha256.clone(), actual });
    }
    Ok(LocalModel { card, onnx_path })
}

fn model_key(name: &str, file: &str) -> Result<ObjectKey, ModelStoreError> {
    ObjectKey::parse(&format!("{MODELS_PREFIX}{name}/{file}"))
        .map_err(|_| ModelStoreError::InvalidName(name.to_owned()))
}

/// Model names are single path segments: `[a-z0-9._-]`, not starting with '.'.
fn check_name(name: &str) -> Result<(), ModelStoreError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid { Ok(()) } else { Err(ModelStoreError::InvalidName(name.to_owned())) }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ModelStoreError> {
    let cache_error = |e: std::io::Error| ModelStoreError::Cache { path: dir.to_owned(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(cache_error)?;
    let mut temporary = tempfile::NamedTempFile::new_in(dir).map_err(cache_error)?;
    std::io::Write::write_all(&mut temporary, bytes).map_err(cache_error)?;
    temporary.persist(path).map_err(|e| cache_error(e.error))?;
    Ok(())
}
