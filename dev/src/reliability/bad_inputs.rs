//! Bad input: the malformed-upload corpus and malformed queue messages thrown at the four
//! services running as separate processes. Each upload's job must end FAILED with its documented
//! code; each malformed message must land in its queue's dead-letter queue; afterwards no service
//! has died, a good upload (under a key with odd characters) still completes, and each service's
//! peak memory stayed under the cap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use iris_core::keys::QueueRole;

use crate::reliability::corpus::{BAD_INPUT_UPLOAD_CAP_BYTES, Expected, bad_inputs, good_studies, malformed_messages};
use crate::reliability::{
    Deployment, ReliabilityError, Service, ServiceFleet, Target, depth_problems, mib, outcome_problem,
};

#[derive(Debug, Clone)]
pub struct BadInputPlan {
    /// Largest peak resident memory any service may reach while it handles the corpus.
    pub memory_cap_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct BadInputReport {
    pub target: &'static str,
    /// Upload file name, expected outcome, how its job ended (status and code).
    pub uploads: Vec<(String, Expected, String)>,
    pub malformed_messages: usize,
    pub dead_lettered: BTreeMap<QueueRole, u64>,
    pub peak_rss: BTreeMap<Service, u64>,
    pub memory_cap_bytes: u64,
    pub elapsed: Duration,
    pub problems: Vec<String>,
}

impl Default for BadInputPlan {
    fn default() -> Self {
        BadInputPlan { memory_cap_bytes: 256 << 20 }
    }
}

pub async fn run_bad_inputs(
    target: &Target,
    binaries: &Path,
    plan: &BadInputPlan,
) -> Result<BadInputReport, ReliabilityError> {
    let cap = BAD_INPUT_UPLOAD_CAP_BYTES.to_string();
    let deployment = Deployment::create(target, &[("IRIS_MAX_UPLOAD_BYTES", &cap)]).await?;
    let mut fleet = ServiceFleet::start(binaries, &deployment)?;
    let started = Instant::now();
    let mut studies = bad_inputs();
    let messages = malformed_messages();
    let mut submitted = deployment.submit_all(&studies).await?;
    for message in &messages {
        deployment.backends.queue(message.queue).send(&message.body).await?;
    }
    // The services keep serving: a good upload after all of that, under a key with odd characters.
    let mut good = good_studies(1).remove(0);
    good.file_name = "scan ü #2 (copy) 100%+&=.nii.gz".into();
    submitted.push(deployment.submit(&good).await?);
    studies.push(good);

    let finished = deployment.finish_all(&submitted, Duration::from_secs(600)).await?;
    let mut expected_dead: BTreeMap<QueueRole, u64> = BTreeMap::new();
    for message in &messages {
        *expected_dead.entry(message.queue).or_insert(0) += 1;
    }
    let depths = wait_for_dead_letters(&deployment, &expected_dead, Duration::from_secs(120)).await?;
    let peak_rss = fleet.peak_rss();
    let mut problems = fleet.exited();
    problems.extend(fleet.stop(Duration::from_secs(30)));
    let elapsed = started.elapsed();

    let mut uploads = Vec::new();
    for (study, done) in studies.iter().zip(&finished) {
        problems.extend(outcome_problem(&study.file_name, study.expected, &done.record));
        let code = done.record.error.as_ref().map(|e| format!(" {}", e.code)).unwrap_or_default();
        uploads.push((study.file_name.clone(), study.expected, format!("{}{code}", done.record.status)));
    }
    problems.extend(depth_problems(&depths, &expected_dead));
    for (service, bytes) in &peak_rss {
        if *bytes > plan.memory_cap_bytes {
            problems.push(format!(
                "{service} peaked at {:.0} MiB, over the {:.0} MiB cap",
                mib(*bytes),
                mib(plan.memory_cap_bytes)
            ));
        }
    }
    if peak_rss.len() != Service::ALL.len() {
        problems.push(format!("peak memory was read for {} of 4 services", peak_rss.len()));
    }
    Ok(BadInputReport {
        target: target.name(),
        uploads,
        malformed_messages: messages.len(),
        dead_lettered: depths.iter().map(|(role, depth)| (*role, depth.dead_lettered)).collect(),
        peak_rss,
        memory_cap_bytes: plan.memory_cap_bytes,
        elapsed,
        problems,
    })
}

/// Waits until every queue is empty and its dead-letter queue holds what it should.
async fn wait_for_dead_letters(
    deployment: &Deployment,
    expected: &BTreeMap<QueueRole, u64>,
    timeout: Duration,
) -> Result<BTreeMap<QueueRole, iris_core::ports::QueueDepth>, ReliabilityError> {
    let started = Instant::now();
    loop {
        let depths = deployment.wait_until_drained(timeout).await?;
        let settled =
            depths.iter().all(|(role, depth)| depth.dead_lettered >= expected.get(role).copied().unwrap_or(0));
        if settled || started.elapsed() > timeout {
            return Ok(depths);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl BadInputReport {
    pub fn to_markdown(&self) -> String {
        let failed = self.uploads.iter().filter(|(_, expected, _)| matches!(expected, Expected::Failed(_))).count();
        let rss: Vec<String> =
            self.peak_rss.iter().map(|(service, bytes)| format!("{service} {:.0} MiB", mib(*bytes))).collect();
        let dead: Vec<String> =
            self.dead_lettered.iter().map(|(role, count)| format!("{} {count}", role.as_str())).collect();
        let mut text = format!(
            "| backend | bad uploads | malformed messages | dead-lettered (by queue) | peak RSS (cap {:.0} MiB) | wall | problems |\n\
             |---|---|---|---|---|---|---|\n\
             | {} | {failed} | {} | {} | {} | {:.1} s | {} |\n\n",
            mib(self.memory_cap_bytes),
            self.target,
            self.malformed_messages,
            dead.join(", "),
            rss.join(", "),
            self.elapsed.as_secs_f64(),
            if self.problems.is_empty() { "none".to_owned() } else { self.problems.join("; ") },
        );
        text.push_str("| upload | expected | ended |\n|---|---|---|\n");
        for (name, expected, ended) in &self.uploads {
            let expected = match expected {
                Expected::Completed => "COMPLETED".to_owned(),
                Expected::Failed(code) => format!("FAILED {code}"),
            };
            text.push_str(&format!("| `{name}` | {expected} | {ended} |\n"));
        }
        text
    }
}
