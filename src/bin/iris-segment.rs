//! `iris-segment`: the segment service alone, on the backends `IRIS_BACKEND` names (embedded by
//! default), running networks on ONNX Runtime (loaded on first use; without it, the classical model).

use std::sync::Arc;

use iris_core::config::IrisConfig;
use iris_core::runtime::cancel_on_shutdown_signals;
use iris_onnxruntime::OrtRuntime;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IrisConfig::from_env()?;
    iris_core::telemetry::init(config.log_format);
    let backends = iris_backends::open(&config).await?;
    let runtime = Arc::new(OrtRuntime::new(&config.segment));
    let shutdown = CancellationToken::new();
    cancel_on_shutdown_signals(shutdown.clone());
    iris_segment::run_service(&backends, &config, runtime, shutdown).await;
    Ok(())
}
