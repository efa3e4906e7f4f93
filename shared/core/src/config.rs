//! One typed configuration, read from environment variables, passed explicitly everywhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::runtime::WorkerSettings;

#[derive(Debug, Clone, PartialEq)]
pub struct IrisConfig {
    /// `IRIS_BACKEND`: `embedded` (default) or `aws`.
    pub backend: BackendKind,
    /// `IRIS_DATA_DIR` (default `./.iris`): objects, the SQLite file, the gateway address.
    pub data_dir: PathBuf,
    /// `IRIS_BUCKET` (default `iris-local`).
    pub bucket: String,
    /// `IRIS_QUEUE_PREFIX` (default `iris-`): queues are `<prefix>ingest`, … and `<prefix>ingest-dlq`, ….
    pub queue_prefix: String,
    /// `IRIS_JOBS_TABLE` (default `iris-jobs`): the DynamoDB job table (AWS backend).
    pub jobs_table: String,
    /// `IRIS_CONNECTIONS_TABLE` (default `iris-connections`): WebSocket connections (AWS backend).
    pub connections_table: String,
    /// `IRIS_EVENT_BUS` (default `iris-pipeline`): the EventBridge bus (AWS backend).
    pub event_bus: String,
    /// `IRIS_LOG_FORMAT`: `text` (default) or `json` (containers).
    pub log_format: LogFormat,
    /// `IRIS_VISIBILITY_TIMEOUT_SECS` (default 30); heartbeats every third of it.
    pub visibility_timeout: Duration,
    /// `IRIS_MAX_ATTEMPTS` (default 8): deliveries before a message is dead-lettered.
    pub max_attempts: u32,
    /// `IRIS_RETRY_BACKOFF_MS` (default 5000): first retry delay, doubling (with jitter) up to
    /// `retry_backoff_max`. With the defaults a transient error is retried for about 8–10 minutes.
    pub retry_backoff_base: Duration,
    /// `IRIS_RETRY_BACKOFF_MAX_SECS` (default 300): the longest wait between two attempts.
    pub retry_backoff_max: Duration,
    /// `IRIS_CONCURRENCY` (default 1): messages each service works on at once.
    pub concurrency: usize,
    /// `IRIS_WS_BIND` (default `127.0.0.1:8765`): the local WebSocket gateway of `iris run`.
    pub websocket_bind: SocketAddr,
    /// `IRIS_WS_CALLBACK_URL` (AWS backend, notify service and WebSocket Lambda): the WebSocket
    /// stage's Management API endpoint, `https://{api}.execute-api.{region}.amazonaws.com/{stage}`.
    pub websocket_callback_url: Option<String>,
    /// `IRIS_TOKEN_PUBLIC_KEY` (WebSocket Lambda authorizer): the Ed25519 public key that verifies
    /// tokens, as `iris token public-key` prints it. Unset: every connection is refused.
    pub token_public_key: Option<String>,
    /// `IRIS_RECORD_SALT` (default empty): the secret salt of the upload key digests job records
    /// keep instead of keys. Set it in production (the CDK app passes a generated secret).
    pub record_salt: String,
    /// `IRIS_MAX_UPLOAD_BYTES` (default 2 GiB).
    pub max_upload_bytes: u64,
    /// `IRIS_MAX_VOXELS` (default 512×512×2000).
    pub max_voxels: u64,
    /// `IRIS_PROCESSING_LIMIT_SECS` (default 1800): longest a stage may work on one study.
    pub processing_limit: Duration,
    /// `IRIS_FAULT_PAUSE_BEFORE_FINISH_MS` (unset by default): fault injection for crash tests; each
    /// stage pauses this long after writing its outputs and before recording itself finished.
    pub fault_pause_before_finish: Option<Duration>,
    /// `IRIS_FAULT_DUPLICATE_DELIVERY_MS` (unset by default): fault injection for the duplicate-delivery
    /// suite; every message a service receives is sent to its queue once more, after a delay of up to
    /// this many milliseconds, so it is delivered twice and out of order (see [`crate::fault`]).
    pub fault_duplicate_delivery: Option<Duration>,
    /// The segment service's model settings.
    pub segment: SegmentSettings,
}

/// How the segment service finds and runs models (see docs/segmentation.md).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSettings {
    /// `IRIS_SEGMENT_MODEL` (default `total`): the task or model run when a job names none; when it
    /// is not in the object store the built-in classical model runs. `classical` always runs that.
    pub default_model: String,
    /// `IRIS_DEVICE`: `auto` (default: CUDA when the library and a GPU allow it, else CPU), `cpu`, `gpu`.
    pub device: DeviceChoice,
    /// `IRIS_MODEL_CACHE_DIR` (default `<data dir>/model-cache`): downloaded models, by checksum.
    pub model_cache_dir: PathBuf,
    /// `ORT_DYLIB_PATH`: ONNX Runtime's shared library. Unset: the one `scripts/onnx-env.sh install`
    /// puts in `~/.cache/iris-onnx-venv`, if present.
    pub onnx_runtime_library: Option<PathBuf>,
    /// `IRIS_ORT_THREADS` (default 0: ONNX Runtime's choice, one per core): intra-op threads.
    pub onnx_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<DeviceChoice, String> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" | "cuda" => Ok(DeviceChoice::Gpu),
            other => Err(format!("'{other}' is not auto, cpu or gpu")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Embedded,
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl IrisConfig {
    pub fn from_env() -> Result<IrisConfig, ConfigError> {
        IrisConfig::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<IrisConfig, ConfigError> {
        fn parse<T: std::str::FromStr>(
            lookup: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
        ) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match lookup(name) {
                None => Ok(default),
                Some(value) if value.trim().is_empty() => Ok(default),
                Some(value) => {
                    value.trim().parse().map_err(|e: T::Err| ConfigError { name, value, reason: e.to_string() })
                }
            }
        }
        let log_format = match lookup("IRIS_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    name: "IRIS_LOG_FORMAT",
                    value: other.into(),
                    reason: "expected text or json".into(),
                });
            }
        };
        let backend = match lookup("IRIS_BACKEND").as_deref().map(str::trim) {
            None | Some("") | Some("embedded") => BackendKind::Embedded,
            Some("aws") => BackendKind::Aws,
            Some(other) => {
                return Err(ConfigError {
                    name: "IRIS_BACKEND",
                    value: other.into(),
                    reason: "expected embedded or aws".into(),
                });
            }
        };
        let named = |name: &str, default: &str| {
            lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
        };
        let visibility_seconds: u64 = parse(&lookup, "IRIS_VISIBILITY_TIMEOUT_SECS", 30)?;
        if visibility_seconds == 0 {
            return Err(ConfigError {
                name: "IRIS_VISIBILITY_TIMEOUT_SECS",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let fault_pause: u64 = parse(&lookup, "IRIS_FAULT_PAUSE_BEFORE_FINISH_MS", 0)?;
        let fault_duplicate: u64 = parse(&lookup, "IRIS_FAULT_DUPLICATE_DELIVERY_MS", 0)?;
        let data_dir =
            PathBuf::from(lookup("IRIS_DATA_DIR").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| ".iris".into()));
        let segment = SegmentSettings {
            default_model: named("IRIS_SEGMENT_MODEL", "total"),
            device: parse(&lookup, "IRIS_DEVICE", DeviceChoice::Auto)?,
            model_cache_dir: lookup("IRIS_MODEL_CACHE_DIR")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("model-cache")),
            onnx_runtime_library: lookup("ORT_DYLIB_PATH").filter(|v| !v.trim().is_empty()).map(PathBuf::from),
            onnx_threads: parse(&lookup, "IRIS_ORT_THREADS", 0usize)?,
        };
        Ok(IrisConfig {
            backend,
            jobs_table: named("IRIS_JOBS_TABLE", "iris-jobs"),
            connections_table: named("IRIS_CONNECTIONS_TABLE", "iris-connections"),
            event_bus: named("IRIS_EVENT_BUS", "iris-pipeline"),
            data_dir,
            bucket: lookup("IRIS_BUCKET").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "iris-local".into()),
            queue_prefix: lookup("IRIS_QUEUE_PREFIX").unwrap_or_else(|| "iris-".into()),
            log_format,
            visibility_timeout: Duration::from_secs(visibility_seconds),
            max_attempts: parse(&lookup, "IRIS_MAX_ATTEMPTS", 8u32)?.max(1),
            retry_backoff_base: Duration::from_millis(parse(&lookup, "IRIS_RETRY_BACKOFF_MS", 5000)?),
            retry_backoff_max: Duration::from_secs(parse(&lookup, "IRIS_RETRY_BACKOFF_MAX_SECS", 300u64)?),
            concurrency: parse(&lookup, "IRIS_CONCURRENCY", 1usize)?.max(1),
            websocket_bind: parse(&lookup, "IRIS_WS_BIND", SocketAddr::from(([127, 0, 0, 1], 8765)))?,
            websocket_callback_url: lookup("IRIS_WS_CALLBACK_URL")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            token_public_key: lookup("IRIS_TOKEN_PUBLIC_KEY").map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()),
            record_salt: lookup("IRIS_RECORD_SALT").unwrap_or_default(),
            max_upload_bytes: parse(&lookup, "IRIS_MAX_UPLOAD_BYTES", 2u64 << 30)?,
            max_voxels: parse(&lookup, "IRIS_MAX_VOXELS", 512u64 * 512 * 2000)?,
            processing_limit: Duration::from_secs(parse(&lookup, "IRIS_PROCESSING_LIMIT_SECS", 1800u64)?.max(1)),
            fault_pause_before_finish: (fault_pause > 0).then(|| Duration::from_millis(fault_pause)),
            fault_duplicate_delivery: (fault_duplicate > 0).then(|| Duration::from_millis(fault_duplicate)),
            segment,
        })
    }

    pub fn queue_name(&self, role: crate::keys::QueueRole) -> String {
        format!("{}{}", self.queue_prefix, role.as_str())
    }

    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.concurrency,
            visibility_timeout: self.visibility_timeout,
            heartbeat_interval: (self.visibility_timeout / 3).max(Duration::from_millis(200)),
            // SQS long polling waits up to 20 s; the embedded queue wakes at once either way.
            receive_wait: Duration::from_secs(match self.backend {
                BackendKind::Embedded => 1,
                BackendKind::Aws => 20,
            }),
            max_attempts: self.max_attempts,
            retry_backoff_base: self.retry_backoff_base,
            retry_backoff_max: self.retry_backoff_max.max(self.retry_backoff_base),
            processing_limit: self.processing_limit,
        }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("iris.sqlite3")
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }

    /// Where a running gateway writes its address for `iris watch`.
    pub fn gateway_file(&self) -> PathBuf {
        self.data_dir.join("gateway.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config = IrisConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config.data_dir, PathBuf::from(".iris"));
        assert_eq!(config.max_attempts, 8);
        // A transient error is retried for minutes, not seconds: the longest wait is 5 minutes
        // and the waits before the last attempt add up to at least half of 615 s (full jitter
        // halves at most).
        let settings = config.worker_settings();
        assert_eq!(settings.retry_backoff_max, Duration::from_secs(300));
        let nominal: Duration = (1..config.max_attempts).map(|n| settings.nominal_backoff_for(n)).sum();
        assert_eq!(nominal, Duration::from_secs(5 + 10 + 20 + 40 + 80 + 160 + 300));
        assert_eq!(config.segment.default_model, "total");
        assert_eq!(config.segment.device, DeviceChoice::Auto);
        assert_eq!(config.segment.model_cache_dir, PathBuf::from(".iris/model-cache"));
        let error = IrisConfig::from_lookup(|name| (name == "IRIS_DEVICE").then(|| "tpu".into())).unwrap_err();
        assert_eq!(error.name, "IRIS_DEVICE");
        let config = IrisConfig::from_lookup(|name| match name {
            "IRIS_DATA_DIR" => Some("/tmp/x".into()),
            "IRIS_VISIBILITY_TIMEOUT_SECS" => Some("3".into()),
            "IRIS_LOG_FORMAT" => Some("json".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.worker_settings().heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.log_format, LogFormat::Json);
        let error = IrisConfig::from_lookup(|name| (name == "IRIS_MAX_ATTEMPTS").then(|| "many".into())).unwrap_err();
        assert_eq!(error.name, "IRIS_MAX_ATTEMPTS");
    }
}
