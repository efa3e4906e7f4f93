//! `iris-ingest`: the ingest service alone, on the embedded backends of `IRIS_DATA_DIR`.

use iris_shared::backends::EmbeddedBackends;
use iris_shared::config::IrisConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IrisConfig::from_env()?;
    iris_shared::telemetry::init(config.log_format);
    let backends = EmbeddedBackends::open(&config)?.ports();
    let shutdown = CancellationToken::new();
    iris_shared::cancel_on_shutdown_signals(shutdown.clone());
    iris_ingest::run_service(&backends, &config, shutdown).await;
    Ok(())
}
