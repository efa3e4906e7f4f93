//! Chaos: studies run through the four services as separate processes while a seeded schedule
//! SIGKILLs one of them at random moments and restarts it. Afterwards every job must have ended
//! as an undisturbed run ended it, with byte-identical outputs, each status recorded once, no
//! message left in flight and nothing dead-lettered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::reliability::corpus::{Study, bad_inputs, good_studies};
use crate::reliability::{
    Deployment, ReliabilityError, Service, ServiceFleet, Target, depth_problems, history_problems, outcome_problem,
};

#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Studies, all uploaded at the start; two of them are bad inputs (when `studies >= 4`).
    pub studies: usize,
    /// SIGKILLs, each while some job is unfinished; fewer is a problem (give more studies).
    pub kills: usize,
    pub seed: u64,
    /// Pause between kills, drawn uniformly from this range (ms).
    pub pause_ms: (u64, u64),
    /// Deliveries a message may take (`IRIS_MAX_ATTEMPTS`); the kill rate is far above any real
    /// crash rate, so a message can be caught by several kills in a row.
    pub max_attempts: u32,
    /// `IRIS_FAULT_PAUSE_BEFORE_FINISH_MS` of the services.
    pub pause_before_finish: Duration,
    /// How long the jobs may take to finish once the killing stops.
    pub settle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub target: &'static str,
    pub plan: ChaosPlan,
    pub kills: BTreeMap<Service, usize>,
    pub completed: usize,
    pub failed_as_expected: usize,
    /// Stage deliveries beyond the first, over all jobs (work redone after a kill).
    pub stage_reruns: u32,
    /// Most deliveries any one stage needed.
    pub most_attempts: u32,
    pub elapsed: Duration,
    pub problems: Vec<String>,
}

impl Default for ChaosPlan {
    fn default() -> Self {
        ChaosPlan {
            studies: 20,
            kills: 50,
            seed: 1,
            pause_ms: (100, 600),
            max_attempts: 10,
            pause_before_finish: Duration::from_millis(1000),
            settle_timeout: Duration::from_secs(600),
        }
    }
}

/// The plan's studies: good ones, and two bad inputs among them.
pub fn chaos_studies(count: usize) -> Vec<Study> {
    let bad_count = if count >= 4 { 2 } else { 0 };
    let mut studies = good_studies(count - bad_count);
    let bad = bad_inputs();
    for name in ["truncated.nii.gz", "gantry-tilt.zip"].into_iter().take(bad_count) {
        studies.push(bad.iter().find(|study| study.file_name == name).expect("in the corpus").clone());
    }
    studies
}

/// Runs the plan on `target` with the service binaries in `binaries`.
pub async fn run_chaos(target: &Target, binaries: &Path, plan: &ChaosPlan) -> Result<ChaosReport, ReliabilityError> {
    let studies = chaos_studies(plan.studies);
    let reference = super::undisturbed_run(&studies).await?;

    let max_attempts = plan.max_attempts.to_string();
    let pause = plan.pause_before_finish.as_millis().to_string();
    // Each stage holds its finished work a moment before recording it: the window where a crash
    // hurts most (outputs written, state not yet moved), and a wider target for the kills.
    let deployment = Deployment::create(
        target,
        &[("IRIS_MAX_ATTEMPTS", &max_attempts), ("IRIS_FAULT_PAUSE_BEFORE_FINISH_MS", &pause)],
    )
    .await?;
    let mut fleet = ServiceFleet::start(binaries, &deployment)?;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let started = Instant::now();
    let mut kills: BTreeMap<Service, usize> = BTreeMap::new();
    let submitted = deployment.submit_all(&studies).await?;
    let mut kill_count = 0;
    // Kill only while some job is unfinished, so every kill can interrupt work.
    while kill_count < plan.kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(plan.pause_ms.0..=plan.pause_ms.1))).await;
        if unfinished(&deployment, &submitted).await? == 0 {
            break;
        }
        let service = Service::ALL[rng.random_range(0..Service::ALL.len())];
        fleet.kill(service)?;
        *kills.entry(service).or_insert(0) += 1;
        kill_count += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=300))).await;
        fleet.restart(service)?;
    }
    let finished = deployment.finish_all(&submitted, plan.settle_timeout).await?;
    let depths = deployment.wait_until_drained(Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();
    let mut problems = fleet.exited();
    problems.extend(fleet.stop(Duration::from_secs(30)));

    let mut report = ChaosReport {
        target: target.name(),
        plan: plan.clone(),
        kills,
        completed: 0,
        failed_as_expected: 0,
        stage_reruns: 0,
        most_attempts: 0,
        elapsed,
        problems,
    };
    for (entry, done) in submitted.iter().zip(&finished) {
        let record = &done.record;
        match outcome_problem(&done.file_name, entry.study.expected, record) {
            Some(problem) => report.problems.push(problem),
            None if record.status == iris_core::job::JobStatus::Completed => report.completed += 1,
            None => report.failed_as_expected += 1,
        }
        report.problems.extend(super::same_as_reference(done, &reference));
        let counts = deployment.status_counts(&entry.job_id).await?;
        report.problems.extend(history_problems(&done.file_name, record, &counts));
        for stage in record.stages.values() {
            report.stage_reruns += stage.attempts.saturating_sub(1);
            report.most_attempts = report.most_attempts.max(stage.attempts);
        }
    }
    report.problems.extend(depth_problems(&depths, &BTreeMap::new()));
    if kill_count < plan.kills {
        report
            .problems
            .push(format!("the studies finished after {kill_count} of {} kills; run more studies", plan.kills));
    }
    Ok(report)
}

async fn unfinished(deployment: &Deployment, submitted: &[super::SubmittedStudy]) -> Result<usize, ReliabilityError> {
    let mut count = 0;
    for entry in submitted {
        let record = deployment.backends.jobs.get(&entry.job_id).await?;
        if !record.is_some_and(|r| r.status.is_terminal()) {
            count += 1;
        }
    }
    Ok(count)
}

impl ChaosReport {
    pub fn to_markdown(&self) -> String {
        let kills: Vec<String> = self.kills.iter().map(|(service, n)| format!("{service} {n}")).collect();
        format!(
            "| backend | studies | SIGKILLs mid-job (by service) | completed | failed as expected | stage re-runs | most deliveries of one stage | wall | problems |\n\
             |---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} ({}) | {} | {} | {} | {} | {:.1} s | {} |\n",
            self.target,
            self.plan.studies,
            self.kills.values().sum::<usize>(),
            kills.join(", "),
            self.completed,
            self.failed_as_expected,
            self.stage_reruns,
            self.most_attempts,
            self.elapsed.as_secs_f64(),
            if self.problems.is_empty() { "none".to_owned() } else { self.problems.join("; ") },
        )
    }
}
