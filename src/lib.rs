//! The binaries' library: running every service in one process, submitting files, waiting for
//! jobs, fetching their outputs, the drop-in inbox, the `iris` commands (`commands`), and what
//! every binary does at its start (`process`). `src/main.rs` only parses arguments and calls into
//! here; the service binaries in `src/bin/` are a few lines each.

pub mod commands;
pub mod inbox;
pub mod models;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::ids::{JobId, UserId};
use iris_core::job::{JobRecord, JobStatus, UploadSource};
use iris_core::keys::ObjectKey;
use iris_core::ports::{ObjectMetadata, ObjectStore, PortError};
use iris_onnxruntime::OrtRuntime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Every service running in this process.
pub struct RunningPipeline {
    shutdown: CancellationToken,
    services: JoinSet<()>,
    pub websocket_address: SocketAddr,
}

/// An upload placed in the object store, and the job it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub key: ObjectKey,
    pub job_id: JobId,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Port(#[from] PortError),
    #[error("{0}")]
    Key(#[from] iris_core::keys::KeyError),
    #[error("{0}")]
    User(#[from] iris_core::ids::InvalidUserId),
    #[error("cannot read {path}: {error}")]
    ReadInput { path: PathBuf, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    WriteOutput { path: PathBuf, error: std::io::Error },
    #[error("job {job_id} did not finish within {waited:?} (last status {status})")]
    Timeout { job_id: JobId, waited: Duration, status: JobStatus },
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
}

/// Starts ingest, segment, mesh and notify (with its WebSocket gateway on `listener`).
pub fn start_pipeline(
    backends: &Backends,
    config: &IrisConfig,
    listener: TcpListener,
) -> std::io::Result<RunningPipeline> {
    let websocket_address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    {
        let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
        services.spawn(async move { iris_ingest::run_service(&backends, &config, shutdown).await });
    }
    {
        let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
        let runtime = Arc::new(OrtRuntime::new(&config.segment));
        services.spawn(async move { iris_segment::run_service(&backends, &config, runtime, shutdown).await });
    }
    {
        let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
        services.spawn(async move { iris_mesh::run_service(&backends, &config, shutdown).await });
    }
    {
        let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
        services.spawn(async move { iris_notify::run_service(&backends, &config, listener, shutdown).await });
    }
    Ok(RunningPipeline { shutdown, services, websocket_address })
}

impl RunningPipeline {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops receiving, lets in-flight messages finish, and waits for every service.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.services.join_next().await.is_some() {}
    }

    /// Waits until the shutdown token is cancelled (e.g. by a signal), then stops.
    pub async fn run_until_shutdown(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }
}

/// Uploads `body` as `uploads/<user>/<file_name>`; the object-created notification starts the job.
pub async fn submit_bytes(
    objects: &dyn ObjectStore,
    user: &UserId,
    file_name: &str,
    body: Vec<u8>,
    metadata: &ObjectMetadata,
) -> Result<Submission, AppError> {
    let key = ObjectKey::parse(&format!("uploads/{user}/{file_name}"))?;
    let info = objects.put(&key, body, metadata).await?;
    let upload = UploadSource {
        bucket: objects.bucket().to_owned(),
        key: key.to_string(),
        etag: info.etag,
        version_id: info.version_id,
    };
    let job_id = upload.job_id();
    Ok(Submission { key, job_id })
}

/// Uploads a local file (see [`submit_bytes`]).
pub async fn submit_file(
    objects: &dyn ObjectStore,
    user: &UserId,
    path: &Path,
    metadata: &ObjectMetadata,
) -> Result<Submission, AppError> {
    let body = tokio::fs::read(path).await.map_err(|error| AppError::ReadInput { path: path.to_owned(), error })?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upload".into());
    submit_bytes(objects, user, &file_name, body, metadata).await
}

/// Polls the job until it is COMPLETED or FAILED, calling `on_change` at every new status.
pub async fn wait_for_job(
    backends: &Backends,
    job_id: &JobId,
    timeout: Duration,
    mut on_change: impl FnMut(&JobRecord),
) -> Result<JobRecord, AppError> {
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Some(job) = backends.jobs.get(job_id).await? {
            if last != Some(job.status) {
                last = Some(job.status);
                on_change(&job);
            }
            if job.status.is_terminal() {
                return Ok(job);
            }
        }
        if started.elapsed() > timeout {
            return Err(AppError::Timeout {
                job_id: job_id.clone(),
                waited: timeout,
                status: last.unwrap_or(JobStatus::Received),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies every object under `jobs/<id>/` into `directory`, keeping relative paths.
pub async fn download_job_outputs(
    objects: &dyn ObjectStore,
    job_id: &JobId,
    directory: &Path,
) -> Result<BTreeMap<String, PathBuf>, AppError> {
    let prefix = format!("jobs/{job_id}/");
    let mut written = BTreeMap::new();
    for object in objects.list(&prefix).await? {
        let relative = object.key.as_str().trim_start_matches(&prefix).to_owned();
        let path = directory.join(&relative);
        let bytes = objects.get(&object.key).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|error| AppError::WriteOutput { path: parent.to_owned(), error })?;
        }
        tokio::fs::write(&path, bytes).await.map_err(|error| AppError::WriteOutput { path: path.clone(), error })?;
        written.insert(relative, path);
    }
    Ok(written)
}

/// Options from `key=value` strings, as object metadata (names lowercased).
pub fn parse_options(pairs: &[String]) -> Result<ObjectMetadata, String> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            }
            _ => Err(format!("option {pair:?} is not name=value")),
        })
        .collect()
}
