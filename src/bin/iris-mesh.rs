//! `iris-mesh`: the mesh service alone, on the backends `IRIS_BACKEND` names (embedded by default).

use iris_core::config::IrisConfig;
use iris_core::runtime::cancel_on_shutdown_signals;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IrisConfig::from_env()?;
    iris_core::telemetry::init(config.log_format);
    let backends = iris_backends::open(&config).await?;
    let shutdown = CancellationToken::new();
    cancel_on_shutdown_signals(shutdown.clone());
    iris_mesh::run_service(&backends, &config, shutdown).await;
    Ok(())
}
