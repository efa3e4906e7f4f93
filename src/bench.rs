//! Benchmarks that print figures and record them in BENCHMARKS.md (never timed assertions).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use iris_shared::backends::{Backends, EmbeddedBackends};
use iris_shared::config::{BackendKind, IrisConfig};
use iris_shared::job::{JobStatus, Stage};
use iris_shared::keys::UserId;
use iris_shared::nifti_codec::{NiftiGeometry, encode_nifti_gz};
use iris_shared::phantom::{PhantomSpec, synthetic_ct};
use iris_shared::time::Timestamp;
use tokio::net::TcpListener;

use crate::{start_pipeline, submit_bytes, wait_for_job};

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
            iris_aws::open_configured_backends(config).await?,
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
