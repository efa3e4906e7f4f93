//! Connecting to a local AWS-protocol endpoint (moto server, LocalStack) with placeholder
//! credentials, and naming a private set of resources on it: what tests, benchmarks and
//! developers running against moto need.

use iris_core::config::{ConfigError, IrisConfig};

use crate::AwsClients;

/// Clients for `endpoint_url` in `us-east-1` with placeholder credentials (local endpoints accept any).
pub async fn clients_for_endpoint(endpoint_url: &str) -> AwsClients {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint_url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "iris-local"))
        .load()
        .await;
    AwsClients::from_sdk_config(&shared)
}

/// An AWS-backend configuration whose every resource name starts with `prefix`, with `extra`
/// variables on top (e.g. `IRIS_MAX_ATTEMPTS`).
pub fn isolated_config(prefix: &str, extra: &[(&str, &str)]) -> Result<IrisConfig, ConfigError> {
    IrisConfig::from_lookup(|name| {
        if let Some((_, value)) = extra.iter().find(|(key, _)| *key == name) {
            return Some((*value).to_owned());
        }
        match name {
            "IRIS_BACKEND" => Some("aws".into()),
            "IRIS_BUCKET" => Some(format!("{prefix}-data")),
            "IRIS_QUEUE_PREFIX" => Some(format!("{prefix}-")),
            "IRIS_JOBS_TABLE" => Some(format!("{prefix}-jobs")),
            "IRIS_CONNECTIONS_TABLE" => Some(format!("{prefix}-connections")),
            "IRIS_EVENT_BUS" => Some(format!("{prefix}-bus")),
            _ => None,
        }
    })
}

/// A short lowercase name unique to this process and moment, for resource prefixes.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{nanos}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("t{:010x}", hash & 0xff_ffff_ffff)
}
