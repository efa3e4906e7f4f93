//! `iris-segment`: the segment service alone, on the backends `IRIS_BACKEND` names (embedded by
//! default), running networks on ONNX Runtime (loaded on first use; without it, the classical model).

use std::sync::Arc;

use iris_onnxruntime::OrtRuntime;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let process = iris::process::ServiceProcess::start().await?;
    let runtime = Arc::new(OrtRuntime::new(&process.config.segment));
    iris_segment::run_service(&process.backends, &process.config, runtime, process.shutdown).await;
    Ok(())
}
