//! Benchmarks that print figures and record them in BENCHMARKS.md (never timed assertions).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use iris::{start_pipeline, submit_bytes, wait_for_job};
use iris_core::backends::Backends;
use iris_core::config::{BackendKind, IrisConfig};
use iris_core::ids::UserId;
use iris_core::job::{JobStatus, Stage};
use iris_core::time::Timestamp;
use iris_embedded::EmbeddedBackends;
use iris_volume::nifti_codec::{NiftiGeometry, encode_nifti_gz};
use iris_volume::phantom::{PhantomSpec, synthetic_ct};
use tokio::net::TcpListener;

/// Hand-off latencies in milliseconds, per kind of hand-off.
#[derive(Debug, Clone, Default)]
pub struct HandoffSamples {
    /// Upload written → ingest started.
    pub upload_to_ingest: Vec<i64>,
    /// `volume.nii.gz` written → segment started.
    pub volume_to_segment: Vec<i64>,
    /// `labels.nii.gz` written → mesh started.
    pub labels_to_mesh: Vec<i64>,
}

impl HandoffSamples {
    pub fn all(&self) -> Vec<i64> {
        let mut all: Vec<i64> =
            self.upload_to_ingest.iter().chain(&self.volume_to_segment).chain(&self.labels_to_mesh).copied().collect();
        all.sort_unstable();
        all
    }
}

/// The value at quantile `q` (nearest rank) of sorted samples.
pub fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `jobs` small studies one after another through the in-process pipeline on `backends` and
/// measures each stage hand-off from the job records: the trigger object's write time (the
/// object-created event's `eventTime`, recorded as the stage's `triggeredAt`) to the stage's start.
pub async fn measure_handoffs(backends: &Backends, config: &IrisConfig, jobs: usize) -> anyhow::Result<HandoffSamples> {
    let pipeline = start_pipeline(backends, config, TcpListener::bind(("127.0.0.1", 0)).await?)?;
    let phantom = synthetic_ct(&PhantomSpec { dims: [48, 40, 32], spacing_mm: 6.0 });
    let geometry = NiftiGeometry::from_affine(phantom.dims(), phantom.affine());
    let user = UserId::parse("bench")?;
    let run = Timestamp::now().epoch_millis();
    let mut samples = HandoffSamples::default();
    for n in 0..jobs {
        let body = encode_nifti_gz(&phantom, &geometry)?;
        let name = format!("study-{run}-{n}.nii.gz");
        let submission = submit_bytes(backends.objects.as_ref(), &user, &name, body, &Default::default()).await?;
        let job = wait_for_job(backends, &submission.job_id, Duration::from_secs(120), |_| {}).await?;
        anyhow::ensure!(job.status == JobStatus::Completed, "study {n} ended {}: {:?}", job.status, job.error);
        let handoff = |stage: Stage| -> anyhow::Result<i64> {
            let record = job.stages.get(&stage).context("stage missing")?;
            let (Some(triggered), Some(started)) = (record.triggered_at, record.started_at) else {
                anyhow::bail!("study {n}: {stage} lacks its trigger or start time");
            };
            Ok(started.epoch_millis() - triggered.epoch_millis())
        };
        samples.upload_to_ingest.push(handoff(Stage::Ingest)?);
        samples.volume_to_segment.push(handoff(Stage::Segment)?);
        samples.labels_to_mesh.push(handoff(Stage::Mesh)?);
    }
    pipeline.stop().await;
    Ok(samples)
}

/// `iris bench handoff`: measure, print, and (with `record`) write the section of BENCHMARKS.md.
/// Embedded runs use a fresh data directory; AWS runs use the configured (bootstrapped) resources.
pub async fn handoff(config: &IrisConfig, jobs: usize, record: Option<&Path>) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let (backends, config, section, label) = match config.backend {
        BackendKind::Embedded => {
            let mut fresh = config.clone();
            fresh.data_dir = directory.path().to_owned();
            (EmbeddedBackends::open(&fresh)?.ports(), fresh, "handoff", "the embedded backends (in-process)")
        }
        BackendKind::Aws => (
            iris_backends::open(config).await?,
            config.clone(),
            "handoff-aws",
            "the AWS backends against moto server (S3 notifications, SQS, DynamoDB, EventBridge)",
        ),
    };
    let started = Instant::now();
    let samples = measure_handoffs(&backends, &config, jobs).await?;
    let elapsed = started.elapsed();
    let mut rows = Vec::new();
    for (name, values) in [
        ("upload → ingest", samples.upload_to_ingest.clone()),
        ("volume.nii.gz → segment", samples.volume_to_segment.clone()),
        ("labels.nii.gz → mesh", samples.labels_to_mesh.clone()),
        ("all hand-offs", samples.all()),
    ] {
        let mut sorted = values;
        sorted.sort_unstable();
        rows.push(format!(
            "| {name} | {} | {} ms | {} ms | {} ms |",
            sorted.len(),
            percentile(&sorted, 0.50),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or(0)
        ));
    }
    let table = format!("| hand-off | samples | p50 | p99 | max |\n|---|---|---|---|---|\n{}\n", rows.join("\n"));
    println!("{jobs} studies in {:.1} s on {label}\n{table}", elapsed.as_secs_f64());
    if let Some(path) = record {
        let command = match config.backend {
            BackendKind::Embedded => format!("`scripts/bench-handoff.sh` (`iris bench handoff --jobs {jobs}`)"),
            BackendKind::Aws => {
                format!("`scripts/bench-handoff-moto.sh` (`iris --backend aws bench handoff --jobs {jobs}`)")
            }
        };
        let text = format!(
            "Measured by {command}, release build, on {} ({} cores): {jobs} small studies one after another \
             through the in-process pipeline on {label}. A hand-off is the time from the trigger object's \
             write (its object-created event's time) to the next stage's start, both recorded on the job \
             (millisecond resolution).\n\n{table}",
            Timestamp::now().to_rfc3339().get(..10).unwrap_or("today"),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        );
        replace_section(path, section, &text)?;
        println!("recorded in {}", path.display());
    }
    Ok(())
}

/// Latencies from a job reaching a status to a WebSocket subscriber receiving it, in microseconds.
#[derive(Debug, Clone, Default)]
pub struct NotifyLatencySamples {
    /// The COMPLETED state, one per study.
    pub completed_us: Vec<i64>,
    /// Every state change (RECEIVED … COMPLETED) of every study.
    pub every_state_us: Vec<i64>,
}

/// Runs `jobs` small studies one after another through the in-process pipeline on the embedded
/// `backends`, with a real WebSocket client of the local gateway subscribed to each before its
/// upload, and measures each state's latency: the client's clock when the `jobState` message
/// arrives minus the event's `occurredAt` (the moment the stage recorded the state in the job
/// table; millisecond resolution, so a figure may read up to 1 ms long).
pub async fn measure_notify_latency(
    backends: &Backends,
    config: &IrisConfig,
    jobs: usize,
) -> anyhow::Result<NotifyLatencySamples> {
    use futures_util::{SinkExt, StreamExt};
    use iris_notify::protocol::ServerMessage;
    use tokio_tungstenite::tungstenite::Message;

    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let pipeline = start_pipeline(backends, config, listener)?;
    let user = UserId::parse("bench")?;
    let token = iris_notify::auth::TokenSigner::load_or_create(&config.data_dir)?.issue(
        &user,
        Duration::from_secs(3600),
        Timestamp::now(),
    )?;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?token={token}")).await?;
    let phantom = synthetic_ct(&PhantomSpec { dims: [48, 40, 32], spacing_mm: 6.0 });
    let geometry = NiftiGeometry::from_affine(phantom.dims(), phantom.affine());
    let run = Timestamp::now().epoch_millis();
    let mut samples = NotifyLatencySamples::default();
    for n in 0..jobs {
        let body = encode_nifti_gz(&phantom, &geometry)?;
        let name = format!("study-{run}-{n}.nii.gz");
        let key = format!("uploads/{user}/{name}");
        let job_id = iris_core::ids::JobId::derive(
            backends.objects.bucket(),
            &key,
            &iris_embedded::DirectoryObjectStore::etag_for(&body),
        );
        let subscribe = serde_json::json!({"action": "subscribe", "jobId": job_id});
        socket.send(Message::text(subscribe.to_string())).await?;
        submit_bytes(backends.objects.as_ref(), &user, &name, body, &Default::default()).await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(120), socket.next())
                .await
                .with_context(|| format!("study {n}: no message within 120 s"))?
                .context("the gateway closed the connection")??;
            let received_us = epoch_micros();
            let Message::Text(text) = frame else { continue };
            match serde_json::from_str::<ServerMessage>(text.as_str())? {
                ServerMessage::JobState { event, .. } if event.job_id == job_id => {
                    let latency = received_us - event.occurred_at.epoch_millis() * 1000;
                    samples.every_state_us.push(latency);
                    match event.status {
                        JobStatus::Completed => {
                            samples.completed_us.push(latency);
                            break;
                        }
                        JobStatus::Failed => anyhow::bail!("study {n} failed: {:?}", event.error),
                        _ => {}
                    }
                }
                ServerMessage::Error { code, message } => anyhow::bail!("study {n}: {code}: {message}"),
                _ => {}
            }
        }
    }
    pipeline.stop().await;
    Ok(samples)
}

fn epoch_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `iris bench notify-latency`: measure on a fresh embedded data directory, print, and (with
/// `record`) write the section of BENCHMARKS.md.
pub async fn notify_latency(config: &IrisConfig, jobs: usize, record: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(jobs > 0, "--jobs must be at least 1");
    let directory = tempfile::tempdir()?;
    let mut fresh = config.clone();
    fresh.backend = BackendKind::Embedded;
    fresh.data_dir = directory.path().to_owned();
    let backends = EmbeddedBackends::open(&fresh)?.ports();
    let started = Instant::now();
    let samples = measure_notify_latency(&backends, &fresh, jobs).await?;
    let elapsed = started.elapsed();
    let mut rows = Vec::new();
    let milliseconds = |micros: i64| format!("{:.1} ms", micros as f64 / 1000.0);
    for (name, values) in
        [("job completed → message", &samples.completed_us), ("every state change → message", &samples.every_state_us)]
    {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        rows.push(format!(
            "| {name} | {} | {} | {} | {} |",
            sorted.len(),
            milliseconds(percentile(&sorted, 0.50)),
            milliseconds(percentile(&sorted, 0.99)),
            milliseconds(sorted.last().copied().unwrap_or(0)),
        ));
    }
    let table = format!("| latency | samples | p50 | p99 | max |\n|---|--:|--:|--:|--:|\n{}\n", rows.join("\n"));
    let mut completed = samples.completed_us.clone();
    completed.sort_unstable();
    let p50_ms = percentile(&completed, 0.50) as f64 / 1000.0;
    let verdict = if p50_ms <= 20.0 { "met" } else { "NOT met" };
    let goal = format!("Goal (notify issue): p50 ≤ 20 ms for job completion → message: {p50_ms:.1} ms — {verdict}.\n");
    println!("{jobs} studies in {:.1} s on the embedded backends\n{table}\n{goal}", elapsed.as_secs_f64());
    if let Some(path) = record {
        let text = format!(
            "Measured by `scripts/bench-notify-latency.sh` (`iris bench notify-latency --jobs {jobs}`), release \
             build, on {} ({} cores): {jobs} small studies one after another through the in-process pipeline on \
             the embedded backends, with one real WebSocket client of the local gateway (token-authenticated) \
             subscribed to each study before its upload. Latency is the client's clock when the `jobState` \
             message arrives minus the event's `occurredAt`, the moment the stage recorded the state in the \
             job table (millisecond resolution: a figure may read up to 1 ms long). The path measured is the \
             whole notification path: job table write → event published (SQLite event bus, rule to the \
             notify queue) → notify consumer → connection store → local gateway → WebSocket frame. The \
             intermediate states are sent while the next stage is computing on every core, so the notify \
             task waits for a core; the completion is sent when the pipeline is idle.\n\n{table}\n{goal}",
            Timestamp::now().to_rfc3339().get(..10).unwrap_or("today"),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        );
        replace_section(path, "notify-latency", &text)?;
        println!("recorded in {}", path.display());
    }
    Ok(())
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in a Markdown file.
pub fn replace_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (start, end) = (format!("<!-- {name}:start -->"), format!("<!-- {name}:end -->"));
    let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
        anyhow::bail!("{} has no {start} … {end} section", path.display());
    };
    let updated = format!("{}{start}\n{body}{}", &text[..a], &text[b..]);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
