//! Benchmarks that print figures and record them in BENCHMARKS.md (never timed assertions).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use iris_shared::backends::EmbeddedBackends;
use iris_shared::config::IrisConfig;
use iris_shared::job::{JobStatus, Stage};
use iris_shared::keys::{self, ObjectKey, UserId};
use iris_shared::nifti_codec::{NiftiGeometry, encode_nifti_gz};
use iris_shared::phantom::{PhantomSpec, synthetic_ct};
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

/// Runs `jobs` small studies one after another through the in-process pipeline on a fresh data
/// directory and measures each stage hand-off: the upstream object's write time (object store
/// metadata) to the downstream stage's start (job record), both wall clock in milliseconds.
pub async fn measure_handoffs(data_dir: &Path, jobs: usize) -> anyhow::Result<HandoffSamples> {
    let config = IrisConfig::from_lookup(|name| (name == "IRIS_DATA_DIR").then(|| data_dir.display().to_string()))?;
    let backends = EmbeddedBackends::open(&config)?.ports();
    let pipeline = start_pipeline(&backends, &config, TcpListener::bind(("127.0.0.1", 0)).await?)?;
    let phantom = synthetic_ct(&PhantomSpec { dims: [48, 40, 32], spacing_mm: 6.0 });
    let geometry = NiftiGeometry::from_affine(phantom.dims(), phantom.affine());
    let user = UserId::parse("bench")?;
    let mut samples = HandoffSamples::default();
    for n in 0..jobs {
        let mut shifted = phantom.clone();
        // A different first voxel per study gives each upload its own ETag and so its own job.
        let mut voxels = shifted.clone().into_voxels();
        voxels[0] = -1000 - (n % 24) as i16 - 24 * (n / 24 % 24) as i16;
        shifted = shifted.with_voxels(voxels)?;
        let body = encode_nifti_gz(&shifted, &geometry)?;
        let submission =
            submit_bytes(backends.objects.as_ref(), &user, &format!("study-{n}.nii.gz"), body, &Default::default())
                .await?;
        let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(120), |_| {}).await?;
        anyhow::ensure!(job.status == JobStatus::Completed, "study {n} ended {}: {:?}", job.status, job.error);
        let written = async |key: &ObjectKey| -> anyhow::Result<i64> {
            Ok(backends.objects.head(key).await?.context("object missing")?.last_modified.epoch_millis())
        };
        let started = |stage: Stage| job.stages.get(&stage).and_then(|s| s.started_at).map(|t| t.epoch_millis());
        let (Some(ingest), Some(segment), Some(mesh)) =
            (started(Stage::Ingest), started(Stage::Segment), started(Stage::Mesh))
        else {
            anyhow::bail!("study {n} lacks stage start times");
        };
        samples.upload_to_ingest.push(ingest - written(&submission.key).await?);
        samples.volume_to_segment.push(segment - written(&keys::volume_key(&job.job_id)).await?);
        samples.labels_to_mesh.push(mesh - written(&keys::labels_key(&job.job_id)).await?);
    }
    pipeline.stop().await;
    Ok(samples)
}

/// `iris bench handoff`: measure, print, and (with `record`) write the section of BENCHMARKS.md.
pub async fn handoff(jobs: usize, record: Option<&Path>) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let started = Instant::now();
    let samples = measure_handoffs(directory.path(), jobs).await?;
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
    println!("{jobs} studies in {:.1} s\n{table}", elapsed.as_secs_f64());
    if let Some(path) = record {
        let section = format!(
            "Measured by `scripts/bench-handoff.sh` (`iris bench handoff --jobs {jobs}`, release build) on {} ({} cores): \
             {jobs} small studies one after another through the in-process pipeline on the embedded backends; \
             each hand-off is the upstream object's write time to the downstream stage's start (wall clock, \
             millisecond resolution). Goal: p50 ≤ 50 ms.\n\n{table}",
            iris_shared::time::Timestamp::now().to_rfc3339().get(..10).unwrap_or("today"),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        );
        replace_section(path, "handoff", &section)?;
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
