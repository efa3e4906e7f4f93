//! `iris-ingest`: the ingest service alone, on the backends `IRIS_BACKEND` names (embedded by default).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let process = iris::process::ServiceProcess::start().await?;
    iris_ingest::run_service(&process.backends, &process.config, process.shutdown).await;
    Ok(())
}
