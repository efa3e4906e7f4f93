//! Duplicate delivery: every queue message (the upload's S3 notification, each stage's trigger,
//! each pipeline event) is delivered twice, the copy up to `max_delay` later and so out of order
//! (`iris_core::fault::DuplicatingWorkQueue` around the real SQLite or SQS adapter), with two
//! messages worked on at once per service. Every job must end as an undisturbed run ended it, with
//! identical outputs, one job per upload, each status recorded once, and a WebSocket subscriber
//! that drops events it has seen (by `eventId`) must see each state exactly once, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iris_core::backends::Backends;
use iris_core::fault::DuplicatingWorkQueue;
use iris_core::ids::{JobId, UserId};
use iris_core::job::JobStatus;
use iris_core::ports::WorkQueue;
use iris_core::time::Timestamp;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::reliability::corpus::{bad_inputs, good_studies};
use crate::reliability::{
    Deployment, ReliabilityError, SUITE_USER, Target, depth_problems, history_problems, outcome_problem,
    same_as_reference,
};

#[derive(Debug, Clone)]
pub struct DuplicatesPlan {
    /// Good studies; one bad input is added.
    pub studies: usize,
    /// Longest delay of a copy; longer than a stage takes, so copies overtake later messages.
    pub max_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct DuplicatesReport {
    pub target: &'static str,
    pub plan: DuplicatesPlan,
    pub jobs: usize,
    pub copies_delivered: u64,
    /// WebSocket `jobState` frames received, before and after dropping repeated event ids.
    pub frames_received: usize,
    pub distinct_states: usize,
    pub elapsed: Duration,
    pub problems: Vec<String>,
}

pub async fn run_duplicates(target: &Target, plan: &DuplicatesPlan) -> Result<DuplicatesReport, ReliabilityError> {
    let mut studies = good_studies(plan.studies);
    studies.extend(bad_inputs().into_iter().filter(|study| study.file_name == "truncated.nii.gz"));
    let reference = super::undisturbed_run(&studies).await?;

    let deployment = Deployment::create(target, &[("IRIS_CONCURRENCY", "2")]).await?;
    let duplicating: Vec<Arc<DuplicatingWorkQueue>> = deployment
        .backends
        .queues
        .values()
        .map(|queue| Arc::new(DuplicatingWorkQueue::new(Arc::clone(queue), plan.max_delay)))
        .collect();
    let backends = Backends {
        queues: deployment
            .backends
            .queues
            .keys()
            .zip(&duplicating)
            .map(|(role, queue)| (*role, Arc::clone(queue) as Arc<dyn WorkQueue>))
            .collect(),
        ..deployment.backends.clone()
    };
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    // Notify and its gateway first, so the subscriber is there before any job moves.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|error| ReliabilityError::Io { what: "bind a local port".into(), error })?;
    let address =
        listener.local_addr().map_err(|error| ReliabilityError::Io { what: "local address".into(), error })?;
    {
        let (backends, config, shutdown) = (backends.clone(), deployment.config.clone(), shutdown.clone());
        services.spawn(async move { iris_notify::run_service(&backends, &config, listener, shutdown).await });
    }
    let submitted = deployment.submit_all(&studies).await?;
    let job_ids: BTreeSet<JobId> = submitted.iter().map(|entry| entry.job_id.clone()).collect();
    let subscriber = tokio::spawn(subscribe_and_collect(
        deployment.config.data_dir.clone(),
        address,
        job_ids.clone(),
        Duration::from_secs(600),
    ));
    // Give the subscriber its subscriptions before the stages start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let (backends, config, shutdown) = (backends.clone(), deployment.config.clone(), shutdown.clone());
        services.spawn(async move { iris_ingest::run_service(&backends, &config, shutdown).await });
    }
    {
        let (backends, config, shutdown) = (backends.clone(), deployment.config.clone(), shutdown.clone());
        let runtime = Arc::new(iris_onnxruntime::OrtRuntime::new(&config.segment));
        services.spawn(async move { iris_segment::run_service(&backends, &config, runtime, shutdown).await });
    }
    {
        let (backends, config, shutdown) = (backends.clone(), deployment.config.clone(), shutdown.clone());
        services.spawn(async move { iris_mesh::run_service(&backends, &config, shutdown).await });
    }
    let finished = deployment.finish_all(&submitted, Duration::from_secs(600)).await?;
    // The last copies are sent up to max_delay after their original; let them arrive and be handled.
    tokio::time::sleep(plan.max_delay + Duration::from_secs(1)).await;
    let depths = deployment.wait_until_drained(Duration::from_secs(60)).await?;
    let collected = subscriber.await.map_err(|e| ReliabilityError::Setup(format!("subscriber task: {e}")))?;
    shutdown.cancel();
    while services.join_next().await.is_some() {}
    let elapsed = started.elapsed();

    let mut problems = Vec::new();
    let (frames, states) = match collected {
        Ok(collected) => collected,
        Err(problem) => {
            problems.push(problem);
            (0, BTreeMap::new())
        }
    };
    for (entry, done) in submitted.iter().zip(&finished) {
        problems.extend(outcome_problem(&done.file_name, entry.study.expected, &done.record));
        problems.extend(same_as_reference(done, &reference));
        let counts = deployment.status_counts(&entry.job_id).await?;
        problems.extend(history_problems(&done.file_name, &done.record, &counts));
        let seen = states.get(&entry.job_id).cloned().unwrap_or_default();
        let expected: Vec<JobStatus> = if done.record.status == JobStatus::Completed {
            JobStatus::ALL.into_iter().filter(|s| *s != JobStatus::Failed).collect()
        } else {
            // A failed job: its statuses up to the failure, then FAILED; the history has them all.
            seen.iter().copied().filter(|s| *s != JobStatus::Failed).chain([JobStatus::Failed]).collect()
        };
        if seen != expected || seen.first() != Some(&JobStatus::Received) {
            problems.push(format!("{}: the subscriber saw {seen:?}, expected {expected:?}", done.file_name));
        }
    }
    let jobs = deployment.user_jobs().await?;
    if jobs.len() != studies.len() {
        problems.push(format!("{} uploads made {} jobs", studies.len(), jobs.len()));
    }
    problems.extend(depth_problems(&depths, &BTreeMap::new()));
    let copies_delivered: u64 = duplicating.iter().map(|queue| queue.copies_sent()).sum();
    // Each job's upload notification, two stage triggers and its events were all copied.
    let minimum_copies = 4 * submitted.len() as u64;
    if copies_delivered < minimum_copies {
        problems.push(format!("only {copies_delivered} copies were delivered (at least {minimum_copies} expected)"));
    }
    Ok(DuplicatesReport {
        target: target.name(),
        plan: plan.clone(),
        jobs: jobs.len(),
        copies_delivered,
        frames_received: frames,
        distinct_states: states.values().map(Vec::len).sum(),
        elapsed,
        problems,
    })
}

/// A WebSocket client of the suite user that subscribes to every job and collects `jobState`
/// frames until each job is COMPLETED or FAILED; repeated `eventId`s are dropped, as a client
/// should. Returns the frames received and each job's statuses in arrival order.
async fn subscribe_and_collect(
    data_dir: std::path::PathBuf,
    address: std::net::SocketAddr,
    jobs: BTreeSet<JobId>,
    timeout: Duration,
) -> Result<(usize, BTreeMap<JobId, Vec<JobStatus>>), String> {
    let user = UserId::parse(SUITE_USER).map_err(|e| e.to_string())?;
    let token = iris_notify::auth::TokenSigner::load_or_create(&data_dir)
        .and_then(|signer| signer.issue(&user, Duration::from_secs(3600), Timestamp::now()))
        .map_err(|e| format!("token: {e}"))?;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?token={token}"))
        .await
        .map_err(|e| format!("connect to the gateway: {e}"))?;
    for job in &jobs {
        let subscribe = serde_json::json!({"action": "subscribe", "jobId": job.as_str()}).to_string();
        socket.send(Message::text(subscribe)).await.map_err(|e| format!("subscribe: {e}"))?;
    }
    let deadline = Instant::now() + timeout;
    let mut seen_ids = BTreeSet::new();
    let mut states: BTreeMap<JobId, Vec<JobStatus>> = BTreeMap::new();
    let mut frames = 0;
    let mut open: BTreeSet<JobId> = jobs;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, socket.next()).await {
            Err(_) => return Err(format!("the subscriber waited {timeout:?}; {} jobs never ended", open.len())),
            Ok(None) => return Err("the gateway closed the connection".into()),
            Ok(Some(Err(e))) => return Err(format!("WebSocket error: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Message::Text(text) = frame else { continue };
        let message: serde_json::Value = serde_json::from_str(text.as_str()).map_err(|e| format!("bad frame: {e}"))?;
        match message["type"].as_str() {
            Some("jobState") => {}
            Some("subscribed" | "progress") => continue,
            other => return Err(format!("unexpected frame {other:?}: {text}")),
        }
        frames += 1;
        let event = &message["event"];
        let event_id = event["eventId"].as_str().unwrap_or_default().to_owned();
        if !seen_ids.insert(event_id) {
            continue;
        }
        let (Some(job), Some(status)) = (
            event["jobId"].as_str().and_then(|j| JobId::parse(j).ok()),
            event["status"].as_str().and_then(|s| serde_json::from_value::<JobStatus>(s.into()).ok()),
        ) else {
            return Err(format!("a jobState frame without job or status: {text}"));
        };
        states.entry(job.clone()).or_default().push(status);
        if status.is_terminal() {
            open.remove(&job);
        }
    }
    let _ = socket.close(None).await;
    Ok((frames, states))
}

impl DuplicatesReport {
    pub fn to_markdown(&self) -> String {
        format!(
            "| backend | studies | jobs | copies delivered (max delay) | jobState frames received | distinct states | wall | problems |\n\
             |---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} ({} ms) | {} | {} | {:.1} s | {} |\n",
            self.target,
            self.plan.studies + 1,
            self.jobs,
            self.copies_delivered,
            self.plan.max_delay.as_millis(),
            self.frames_received,
            self.distinct_states,
            self.elapsed.as_secs_f64(),
            if self.problems.is_empty() { "none".to_owned() } else { self.problems.join("; ") },
        )
    }
}
