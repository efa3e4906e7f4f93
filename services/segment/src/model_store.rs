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

    async fn get_if_present(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>, ModelStoreError> {
        let key = ObjectKey::parse(&format!("models/{name}/{file}"))
            .map_err(|_| ModelStoreError::InvalidName(name.to_owned()))?;
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
