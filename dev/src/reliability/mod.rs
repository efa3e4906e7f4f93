//! The reliability suites of RELIABILITY.md: chaos (SIGKILL at random moments), duplicate and
//! out-of-order delivery, malformed inputs, and load. Each runs the real services on a private
//! deployment — the embedded backends in a temporary directory, or a fresh set of resources on
//! moto server — and returns a report whose `problems` list is empty when every promise held.
//! `iris reliability …` prints and records the reports; the tests run short versions.

pub mod bad_inputs;
pub mod chaos;
pub mod corpus;
pub mod duplicates;
pub mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iris::{AppError, submit_bytes};
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::events::EventEnvelope;
use iris_core::ids::{JobId, UserId};
use iris_core::job::{JobRecord, JobStatus};
use iris_core::keys::QueueRole;
use iris_core::ports::{PortError, QueueDepth, WorkQueue};
use iris_embedded::EmbeddedBackends;
use sha2::{Digest, Sha256};

use crate::reliability::corpus::{Expected, Study};

/// Where a suite runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The embedded backends (a directory and SQLite) in a temporary directory.
    Embedded,
    /// A private set of resources on a moto server (S3, SQS, DynamoDB, EventBridge).
    Moto { endpoint_url: String },
}

/// Everything that can stop a suite from running (as opposed to a broken promise, which is a
/// report's `problems`).
#[derive(Debug, thiserror::Error)]
pub enum ReliabilityError {
    #[error("{0}")]
    Port(#[from] PortError),
    #[error("{0}")]
    App(#[from] AppError),
    #[error("configuration: {0}")]
    Config(#[from] iris_core::config::ConfigError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

/// The four services, each a binary of its own (`iris-<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Ingest,
    Segment,
    Mesh,
    Notify,
}

/// A private deployment: its configuration, the variables that give it to a service process, and
/// the ports to submit and inspect through.
pub struct Deployment {
    pub target: Target,
    pub variables: BTreeMap<String, String>,
    pub config: IrisConfig,
    pub backends: Backends,
    embedded: Option<EmbeddedBackends>,
    /// Moto: a queue fed every pipeline event by its own EventBridge rule (an integration's view).
    observer: Option<iris_aws::SqsWorkQueue>,
    observed: Mutex<Vec<EventEnvelope>>,
    directory: tempfile::TempDir,
}

/// One study's upload and job.
#[derive(Debug, Clone)]
pub struct SubmittedStudy {
    pub study: Study,
    pub job_id: JobId,
}

/// A finished study: its record and a digest of each output, by path under `jobs/<id>/`.
#[derive(Debug, Clone)]
pub struct FinishedStudy {
    pub file_name: String,
    pub record: JobRecord,
    pub outputs: BTreeMap<String, String>,
}

/// The user every suite uploads as.
pub const SUITE_USER: &str = "reliability";

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Embedded => "embedded",
            Target::Moto { .. } => "moto",
        }
    }
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Ingest, Service::Segment, Service::Mesh, Service::Notify];

    pub fn binary_name(self) -> &'static str {
        match self {
            Service::Ingest => "iris-ingest",
            Service::Segment => "iris-segment",
            Service::Mesh => "iris-mesh",
            Service::Notify => "iris-notify",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

impl Deployment {
    /// Creates the deployment's resources with `settings` (IRIS_* variables) on top of the suite
    /// defaults: short visibility timeout and backoff so redeliveries after a kill come quickly.
    pub async fn create(target: &Target, settings: &[(&str, &str)]) -> Result<Deployment, ReliabilityError> {
        let directory = tempfile::tempdir().map_err(|error| ReliabilityError::Io { what: "temp dir".into(), error })?;
        let mut variables: BTreeMap<String, String> = BTreeMap::new();
        variables.insert("IRIS_DATA_DIR".into(), directory.path().join("data").display().to_string());
        variables.insert("IRIS_WS_BIND".into(), "127.0.0.1:0".into());
        variables.insert("IRIS_VISIBILITY_TIMEOUT_SECS".into(), "2".into());
        variables.insert("IRIS_RETRY_BACKOFF_MS".into(), "100".into());
        variables.insert("IRIS_RETRY_BACKOFF_MAX_SECS".into(), "2".into());
        variables.entry("IRIS_MAX_ATTEMPTS".into()).or_insert_with(|| "4".into());
        // The suites exercise the pipeline, not a model: the built-in classical model, always.
        variables.insert("IRIS_SEGMENT_MODEL".into(), "classical".into());
        variables.insert("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        if let Target::Moto { endpoint_url } = target {
            let prefix = iris_aws::local::unique_prefix();
            for (name, value) in [
                ("IRIS_BACKEND", "aws".to_owned()),
                ("IRIS_BUCKET", format!("{prefix}-data")),
                ("IRIS_QUEUE_PREFIX", format!("{prefix}-")),
                ("IRIS_JOBS_TABLE", format!("{prefix}-jobs")),
                ("IRIS_CONNECTIONS_TABLE", format!("{prefix}-connections")),
                ("IRIS_EVENT_BUS", format!("{prefix}-bus")),
                // Notify posts only to subscribed connections; the suites subscribe none on moto.
                ("IRIS_WS_CALLBACK_URL", endpoint_url.clone()),
                ("AWS_ENDPOINT_URL", endpoint_url.clone()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ] {
                variables.insert(name.into(), value);
            }
        }
        for (name, value) in settings {
            variables.insert((*name).to_owned(), (*value).to_owned());
        }
        let config = IrisConfig::from_lookup(|name| variables.get(name).cloned())?;
        let (backends, embedded, observer) = match target {
            Target::Embedded => {
                let embedded = EmbeddedBackends::open(&config)?;
                (embedded.ports(), Some(embedded), None)
            }
            Target::Moto { endpoint_url } => {
                let clients = iris_aws::local::clients_for_endpoint(endpoint_url).await;
                iris_aws::bootstrap::bootstrap(&config, &clients).await?;
                let observer_name = format!("{}observer", config.queue_prefix);
                iris_aws::bootstrap::create_plain_queue(&clients, &observer_name).await?;
                iris_aws::bootstrap::create_plain_queue(&clients, &format!("{observer_name}-dlq")).await?;
                iris_aws::bootstrap::route_events_to_queue(&config, &clients, &observer_name).await?;
                let observer = iris_aws::SqsWorkQueue::open(clients.sqs.clone(), &observer_name).await?;
                (iris_aws::open_backends(&config, &clients).await?, None, Some(observer))
            }
        };
        Ok(Deployment {
            target: target.clone(),
            variables,
            config,
            backends,
            embedded,
            observer,
            observed: Mutex::new(Vec::new()),
            directory,
        })
    }

    /// The deployment's own directory (data directory, service logs).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    pub fn embedded(&self) -> Option<&EmbeddedBackends> {
        self.embedded.as_ref()
    }

    /// Uploads every study (one after another, as fast as the store takes them).
    pub async fn submit_all(&self, studies: &[Study]) -> Result<Vec<SubmittedStudy>, ReliabilityError> {
        let mut submitted = Vec::with_capacity(studies.len());
        for study in studies {
            submitted.push(self.submit(study).await?);
        }
        Ok(submitted)
    }

    pub async fn submit(&self, study: &Study) -> Result<SubmittedStudy, ReliabilityError> {
        let user = UserId::parse(SUITE_USER).map_err(AppError::from)?;
        let submission =
            submit_bytes(self.backends.objects.as_ref(), &user, &study.file_name, study.body.clone(), &BTreeMap::new())
                .await?;
        Ok(SubmittedStudy { study: study.clone(), job_id: submission.job_id })
    }

    /// Waits until every job is COMPLETED or FAILED, then reads its outputs. Jobs still running
    /// after `timeout` are returned as they stand.
    pub async fn finish_all(
        &self,
        submitted: &[SubmittedStudy],
        timeout: Duration,
    ) -> Result<Vec<FinishedStudy>, ReliabilityError> {
        let started = Instant::now();
        let mut records: BTreeMap<JobId, JobRecord> = BTreeMap::new();
        loop {
            for entry in submitted {
                if records.get(&entry.job_id).is_some_and(|record| record.status.is_terminal()) {
                    continue;
                }
                if let Some(record) = self.backends.jobs.get(&entry.job_id).await? {
                    records.insert(entry.job_id.clone(), record);
                }
            }
            let done = submitted.iter().all(|e| records.get(&e.job_id).is_some_and(|r| r.status.is_terminal()));
            if done || started.elapsed() > timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut finished = Vec::with_capacity(submitted.len());
        for entry in submitted {
            let Some(record) = records.remove(&entry.job_id) else {
                return Err(ReliabilityError::Setup(format!("no job record for {}", entry.study.file_name)));
            };
            let outputs = self.output_digests(&entry.job_id).await?;
            finished.push(FinishedStudy { file_name: entry.study.file_name.clone(), record, outputs });
        }
        Ok(finished)
    }

    /// SHA-256 of every object under `jobs/<id>/`, by path relative to it.
    pub async fn output_digests(&self, job_id: &JobId) -> Result<BTreeMap<String, String>, ReliabilityError> {
        let prefix = format!("jobs/{job_id}/");
        let mut digests = BTreeMap::new();
        for object in self.backends.objects.list(&prefix).await? {
            let bytes = self.backends.objects.get(&object.key).await?;
            let relative = object.key.as_str().trim_start_matches(&prefix).to_owned();
            digests.insert(relative, hex::encode(Sha256::digest(&bytes)));
        }
        Ok(digests)
    }

    pub async fn queue_depths(&self) -> Result<BTreeMap<QueueRole, QueueDepth>, ReliabilityError> {
        let mut depths = BTreeMap::new();
        for (role, queue) in &self.backends.queues {
            depths.insert(*role, queue.depth().await?);
        }
        Ok(depths)
    }

    /// Waits until no message is visible or in flight in any work queue (or `timeout` passes);
    /// returns the last depths seen.
    pub async fn wait_until_drained(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<QueueRole, QueueDepth>, ReliabilityError> {
        let started = Instant::now();
        loop {
            let depths = self.queue_depths().await?;
            let busy: u64 = depths.values().map(|d| d.visible + d.in_flight).sum();
            if busy == 0 || started.elapsed() > timeout {
                return Ok(depths);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// How many times each status was recorded for the job: the embedded job table's history of
    /// applied transitions; on moto, the distinct versions of each status's event an integration
    /// received (a repeated event carries the same id and the same record; a second transition
    /// to a status would carry another).
    pub async fn status_counts(&self, job_id: &JobId) -> Result<BTreeMap<String, usize>, ReliabilityError> {
        let mut counts = BTreeMap::new();
        if let Some(embedded) = &self.embedded {
            for entry in embedded.jobs.history(job_id).await? {
                *counts.entry(entry.status).or_insert(0) += 1;
            }
            return Ok(counts);
        }
        self.drain_observer().await?;
        let observed = self.observed.lock().map_err(|_| ReliabilityError::Setup("observer lock".into()))?;
        let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for event in observed.iter().filter(|event| &event.detail.job_id == job_id) {
            if event.detail.progress.is_some() {
                continue;
            }
            let detail = serde_json::to_string(&event.detail).unwrap_or_default();
            versions.entry(event.detail.status.as_str().to_owned()).or_default().insert(detail);
        }
        for (status, set) in versions {
            counts.insert(status, set.len());
        }
        Ok(counts)
    }

    /// Moves every event waiting on the observer queue into `observed`.
    async fn drain_observer(&self) -> Result<(), ReliabilityError> {
        let Some(observer) = &self.observer else { return Ok(()) };
        loop {
            let batch = observer.receive(10, Duration::from_secs(30), Duration::from_millis(500)).await?;
            if batch.is_empty() {
                return Ok(());
            }
            for message in batch {
                let event: EventEnvelope = serde_json::from_str(&message.body)
                    .map_err(|e| ReliabilityError::Setup(format!("observer got a non-event: {e}")))?;
                self.observed.lock().map_err(|_| ReliabilityError::Setup("observer lock".into()))?.push(event);
                observer.ack(&message.receipt).await?;
            }
        }
    }

    /// Jobs of the suite user, newest first.
    pub async fn user_jobs(&self) -> Result<Vec<JobRecord>, ReliabilityError> {
        let user = UserId::parse(SUITE_USER).map_err(AppError::from)?;
        Ok(self.backends.jobs.list_by_user(&user, 10_000).await?)
    }
}

/// The four services as child processes of this one, on a deployment's variables. Their logs go
/// to `<deployment>/logs/<service>.log` (appended across restarts).
pub struct ServiceFleet {
    binaries: PathBuf,
    variables: BTreeMap<String, String>,
    logs: PathBuf,
    children: BTreeMap<Service, Child>,
    pub restarts: BTreeMap<Service, usize>,
}

impl ServiceFleet {
    /// Starts every service from the `iris-*` binaries in `binaries`.
    pub fn start(binaries: &Path, deployment: &Deployment) -> Result<ServiceFleet, ReliabilityError> {
        let logs = deployment.directory().join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|error| ReliabilityError::Io { what: logs.display().to_string(), error })?;
        let mut fleet = ServiceFleet {
            binaries: binaries.to_owned(),
            variables: deployment.variables.clone(),
            logs,
            children: BTreeMap::new(),
            restarts: BTreeMap::new(),
        };
        for service in Service::ALL {
            fleet.spawn(service)?;
        }
        Ok(fleet)
    }

    fn spawn(&mut self, service: Service) -> Result<(), ReliabilityError> {
        let binary = self.binaries.join(service.binary_name());
        if !binary.is_file() {
            return Err(ReliabilityError::Setup(format!(
                "{} is not built (cargo build --workspace --bins)",
                binary.display()
            )));
        }
        let log_path = self.logs.join(format!("{}.log", service.binary_name()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| ReliabilityError::Io { what: log_path.display().to_string(), error })?;
        let log_err =
            log.try_clone().map_err(|error| ReliabilityError::Io { what: log_path.display().to_string(), error })?;
        let child = Command::new(&binary)
            .env_clear()
            .envs(std::env::vars().filter(|(name, _)| name == "PATH" || name == "HOME" || name == "ORT_DYLIB_PATH"))
            .envs(&self.variables)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| ReliabilityError::Io { what: format!("start {}", binary.display()), error })?;
        self.children.insert(service, child);
        Ok(())
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill(&mut self, service: Service) -> Result<(), ReliabilityError> {
        if let Some(mut child) = self.children.remove(&service) {
            child.kill().map_err(|error| ReliabilityError::Io { what: format!("SIGKILL {service}"), error })?;
            child.wait().map_err(|error| ReliabilityError::Io { what: format!("reap {service}"), error })?;
        }
        Ok(())
    }

    pub fn restart(&mut self, service: Service) -> Result<(), ReliabilityError> {
        *self.restarts.entry(service).or_insert(0) += 1;
        self.spawn(service)
    }

    /// Services whose process has exited on its own (it should never happen).
    pub fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (service, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push(format!("{service} exited by itself ({status})"));
            }
        }
        exited
    }

    /// Each running service's peak resident memory so far (VmHWM, bytes; Linux).
    pub fn peak_rss(&self) -> BTreeMap<Service, u64> {
        self.children
            .iter()
            .filter_map(|(service, child)| peak_rss_of(child.id()).map(|bytes| (*service, bytes)))
            .collect()
    }

    /// SIGTERM to every service; each must finish its in-flight work and exit 0 within `grace`.
    /// Returns the problems (a service that did not stop, or stopped with an error).
    pub fn stop(mut self, grace: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        for (service, child) in &self.children {
            let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            if !sent.is_ok_and(|status| status.success()) {
                problems.push(format!("could not send SIGTERM to {service}"));
            }
        }
        let started = Instant::now();
        for (service, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        problems.push(format!("{service} exited with {status} on SIGTERM"));
                        break;
                    }
                    Ok(None) if started.elapsed() < grace => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        problems.push(format!("{service} did not stop within {grace:?} of SIGTERM"));
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
        problems
    }
}

impl Drop for ServiceFleet {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VmHWM of a process, in bytes.
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The directory of the running executable: where `iris-ingest` and the others are built.
pub fn binaries_beside_this_executable() -> Result<PathBuf, ReliabilityError> {
    let exe = std::env::current_exe().map_err(|error| ReliabilityError::Io { what: "current exe".into(), error })?;
    exe.parent().map(Path::to_owned).ok_or_else(|| ReliabilityError::Setup("executable has no directory".into()))
}

/// The outcome a study's job must reach, checked against its record; `None` when it did.
pub fn outcome_problem(file_name: &str, expected: Expected, record: &JobRecord) -> Option<String> {
    let code = record.error.as_ref().map(|error| error.code);
    match (expected, record.status) {
        (Expected::Completed, JobStatus::Completed) => None,
        (Expected::Failed(wanted), JobStatus::Failed) if code == Some(wanted) => None,
        (expected, status) => Some(format!(
            "{file_name}: ended {status} ({}), expected {expected:?}",
            record.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_else(|| "no error".into())
        )),
    }
}

/// Problems with queue depths after a run: anything left visible or in flight, and dead letters
/// beyond those `expected_dead` allows per queue.
pub fn depth_problems(
    depths: &BTreeMap<QueueRole, QueueDepth>,
    expected_dead: &BTreeMap<QueueRole, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (role, depth) in depths {
        if depth.visible + depth.in_flight > 0 {
            problems.push(format!(
                "{} queue still holds {} visible and {} in-flight messages",
                role.as_str(),
                depth.visible,
                depth.in_flight
            ));
        }
        let expected = expected_dead.get(role).copied().unwrap_or(0);
        if depth.dead_lettered != expected {
            problems.push(format!(
                "{} dead-letter queue holds {} messages, expected {expected}",
                role.as_str(),
                depth.dead_lettered
            ));
        }
    }
    problems
}

/// Problems with a job's status history: every status of its ladder recorded exactly once.
pub fn history_problems(file_name: &str, record: &JobRecord, counts: &BTreeMap<String, usize>) -> Vec<String> {
    let mut problems = Vec::new();
    let terminal = record.status.as_str();
    if counts.get(terminal).copied() != Some(1) {
        problems.push(format!("{file_name}: {terminal} recorded {} times", counts.get(terminal).copied().unwrap_or(0)));
    }
    for (status, count) in counts {
        if *count != 1 {
            problems.push(format!("{file_name}: {status} recorded {count} times"));
        }
    }
    problems
}

/// Mebibytes, for reports.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// The q-quantile (0..=1) of `values` by nearest rank; 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The studies through every service in this process on a fresh embedded deployment, nothing
/// disturbed: what a disturbed run must reproduce, by upload file name.
pub async fn undisturbed_run(studies: &[Study]) -> Result<BTreeMap<String, FinishedStudy>, ReliabilityError> {
    let deployment = Deployment::create(&Target::Embedded, &[]).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|error| ReliabilityError::Io { what: "bind a local port".into(), error })?;
    let pipeline = iris::start_pipeline(&deployment.backends, &deployment.config, listener)
        .map_err(|error| ReliabilityError::Io { what: "start the pipeline".into(), error })?;
    let submitted = deployment.submit_all(studies).await?;
    let finished = deployment.finish_all(&submitted, Duration::from_secs(900)).await;
    pipeline.stop().await;
    let finished = finished?;
    if let Some(unfinished) = finished.iter().find(|study| !study.record.status.is_terminal()) {
        return Err(ReliabilityError::Setup(format!("the undisturbed run did not finish {}", unfinished.file_name)));
    }
    Ok(finished.into_iter().map(|study| (study.file_name.clone(), study)).collect())
}

/// Problems when a finished study differs from its undisturbed run.
pub fn same_as_reference(done: &FinishedStudy, references: &BTreeMap<String, FinishedStudy>) -> Vec<String> {
    let Some(reference) = references.get(&done.file_name) else {
        return vec![format!("{}: no undisturbed run to compare with", done.file_name)];
    };
    let mut problems = Vec::new();
    if done.record.status != reference.record.status
        || done.record.error.as_ref().map(|e| &e.code) != reference.record.error.as_ref().map(|e| &e.code)
    {
        problems.push(format!(
            "{}: ended {} but {} undisturbed",
            done.file_name, done.record.status, reference.record.status
        ));
    }
    if done.outputs.keys().ne(reference.outputs.keys()) {
        problems.push(format!(
            "{}: outputs {:?} but {:?} undisturbed",
            done.file_name,
            done.outputs.keys().collect::<Vec<_>>(),
            reference.outputs.keys().collect::<Vec<_>>()
        ));
    }
    for (path, digest) in &done.outputs {
        if reference.outputs.get(path).is_some_and(|expected| expected != digest) {
            problems.push(format!("{}: {path} differs from the undisturbed run", done.file_name));
        }
    }
    problems
}
