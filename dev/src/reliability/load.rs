//! Load: many small studies uploaded at once to the four services running as separate processes.
//! All must complete; the report gives throughput, how long stage messages waited in their queues
//! (from each stage's trigger time to its start, as the job record has them) and each service's
//! peak resident memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use iris_core::job::Stage;
use iris_core::time::Timestamp;

use crate::reliability::corpus::good_studies;
use crate::reliability::{
    Deployment, ReliabilityError, Service, ServiceFleet, Target, depth_problems, mib, outcome_problem, quantile,
};

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub studies: usize,
    /// Messages each service works on at once (`IRIS_CONCURRENCY`).
    pub concurrency: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub target: &'static str,
    pub plan: LoadPlan,
    pub completed: usize,
    /// From the first upload to the last job's completion.
    pub makespan: Duration,
    pub upload_time: Duration,
    /// Seconds each stage's message waited in its queue, p50 and p99, by stage.
    pub queue_age_seconds: BTreeMap<Stage, (f64, f64)>,
    pub queue_age_p99_all: f64,
    pub peak_rss: BTreeMap<Service, u64>,
    pub problems: Vec<String>,
}

impl Default for LoadPlan {
    fn default() -> Self {
        LoadPlan { studies: 200, concurrency: 1, timeout: Duration::from_secs(3600) }
    }
}

pub async fn run_load(target: &Target, binaries: &Path, plan: &LoadPlan) -> Result<LoadReport, ReliabilityError> {
    let studies = good_studies(plan.studies);
    let concurrency = plan.concurrency.to_string();
    let deployment = Deployment::create(target, &[("IRIS_CONCURRENCY", &concurrency)]).await?;
    let mut fleet = ServiceFleet::start(binaries, &deployment)?;
    let started = Instant::now();
    let first_upload = Timestamp::now();
    let submitted = deployment.submit_all(&studies).await?;
    let upload_time = started.elapsed();
    let finished = deployment.finish_all(&submitted, plan.timeout).await?;
    let depths = deployment.wait_until_drained(Duration::from_secs(60)).await?;
    let peak_rss = fleet.peak_rss();
    let mut problems = fleet.exited();
    problems.extend(fleet.stop(Duration::from_secs(30)));

    let mut completed = 0;
    let mut last_update = first_upload;
    let mut ages: BTreeMap<Stage, Vec<f64>> = BTreeMap::new();
    for (entry, done) in submitted.iter().zip(&finished) {
        match outcome_problem(&done.file_name, entry.study.expected, &done.record) {
            Some(problem) => problems.push(problem),
            None => completed += 1,
        }
        last_update = last_update.max(done.record.updated_at);
        for (stage, record) in &done.record.stages {
            if let (Some(triggered), Some(started)) = (record.triggered_at, record.started_at) {
                let waited = (started.epoch_millis() - triggered.epoch_millis()).max(0) as f64 / 1000.0;
                ages.entry(*stage).or_default().push(waited);
            }
        }
    }
    problems.extend(depth_problems(&depths, &BTreeMap::new()));
    let all: Vec<f64> = ages.values().flatten().copied().collect();
    if all.len() < 3 * completed {
        problems.push(format!("only {} of {} stage queue waits were recorded", all.len(), 3 * completed));
    }
    Ok(LoadReport {
        target: target.name(),
        plan: plan.clone(),
        completed,
        makespan: Duration::from_millis((last_update.epoch_millis() - first_upload.epoch_millis()).max(0) as u64),
        upload_time,
        queue_age_seconds: ages.iter().map(|(stage, v)| (*stage, (quantile(v, 0.5), quantile(v, 0.99)))).collect(),
        queue_age_p99_all: quantile(&all, 0.99),
        peak_rss,
        problems,
    })
}

impl LoadReport {
    pub fn studies_per_minute(&self) -> f64 {
        self.completed as f64 / self.makespan.as_secs_f64().max(1e-9) * 60.0
    }

    pub fn to_markdown(&self) -> String {
        let ages: Vec<String> = self
            .queue_age_seconds
            .iter()
            .map(|(stage, (p50, p99))| format!("{} {p50:.1} / {p99:.1}", stage.as_str()))
            .collect();
        let rss: Vec<String> =
            self.peak_rss.iter().map(|(service, bytes)| format!("{service} {:.0} MiB", mib(*bytes))).collect();
        format!(
            "| backend | studies | completed | uploads took | all done after | throughput | queue wait p50 / p99 by stage (s) | queue wait p99, all stages | peak RSS | problems |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {:.1} s | {:.1} s | {:.1} studies/min | {} | {:.1} s | {} | {} |\n",
            self.target,
            self.plan.studies,
            self.completed,
            self.upload_time.as_secs_f64(),
            self.makespan.as_secs_f64(),
            self.studies_per_minute(),
            ages.join(", "),
            self.queue_age_p99_all,
            rss.join(", "),
            if self.problems.is_empty() { "none".to_owned() } else { self.problems.join("; ") },
        )
    }
}
