//! Failures and races at the upload. A failure is not forever: after a transient outage made a
//! job fail, uploading the same file again starts the job's next run, which completes; the failed
//! run stays in the record. And a job is computed only from the bytes that were checked.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iris_core::ErrorCode;
use iris_core::backends::Backends;
use iris_core::ids::JobId;
use iris_core::job::{JobRecord, JobStatus};
use iris_core::keys::ObjectKey;
use iris_core::ports::{ObjectInfo, ObjectMetadata, ObjectStore, PortError};

use crate::support::{Harness, check_completed_job, small_phantom};

/// Fault injection around the real directory store (not a mock: every call reaches it unless the
/// outage is on): while `down` is set, reading an upload fails as an S3 outage would (retryable).
struct UploadReadOutage {
    inner: Arc<dyn ObjectStore>,
    down: AtomicBool,
    refused: AtomicU32,
}

#[async_trait]
impl ObjectStore for UploadReadOutage {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn put(&self, key: &ObjectKey, body: Vec<u8>, metadata: &ObjectMetadata) -> Result<ObjectInfo, PortError> {
        self.inner.put(key, body, metadata).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, PortError> {
        if self.down.load(Ordering::SeqCst) && key.as_str().starts_with("uploads/") {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::unavailable("s3", "503 Service Unavailable (injected outage)"));
        }
        self.inner.get(key).await
    }
    async fn get_matching(&self, key: &ObjectKey, etag: &str, max_bytes: u64) -> Result<Vec<u8>, PortError> {
        if self.down.load(Ordering::SeqCst) && key.as_str().starts_with("uploads/") {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::unavailable("s3", "503 Service Unavailable (injected outage)"));
        }
        self.inner.get_matching(key, etag, max_bytes).await
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, PortError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PortError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        self.inner.delete(key).await
    }
}

/// Polls the job until `done` holds for it.
async fn wait_until(backends: &Backends, job_id: &JobId, what: &str, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
    let started = Instant::now();
    loop {
        if let Some(job) = backends.jobs.get(job_id).await.expect("get")
            && done(&job)
        {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "waited 120 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reupload_after_a_cleared_transient_failure_completes_as_the_jobs_second_run() {
    let mut harness = Harness::new(&[("IRIS_MAX_ATTEMPTS", "3"), ("IRIS_RETRY_BACKOFF_MS", "50")]);
    let outage = Arc::new(UploadReadOutage {
        inner: Arc::clone(&harness.backends.objects),
        down: AtomicBool::new(true),
        refused: AtomicU32::new(0),
    });
    harness.backends.objects = outage.clone();
    let pipeline = harness.start().await;
    let upload = small_phantom();

    let job_id = harness.submit("carol", "scan.nii.gz", upload.clone()).await;
    let failed = wait_until(&harness.backends, &job_id, "the outage to fail the job", |j| j.status.is_terminal()).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.clone().expect("error");
    assert_eq!(error.code, ErrorCode::RetriesExhausted, "{error:?}");
    assert_eq!(outage.refused.load(Ordering::SeqCst), 3, "one read per attempt, IRIS_MAX_ATTEMPTS of them");

    // The outage is over; the same file is uploaded again under the same name: the same job.
    outage.down.store(false, Ordering::SeqCst);
    let again = harness.submit("carol", "scan.nii.gz", upload.clone()).await;
    assert_eq!(again, job_id, "same bytes, same key: same job id");
    let completed =
        wait_until(&harness.backends, &job_id, "the second run to end", |j| j.run == 2 && j.status.is_terminal()).await;
    check_completed_job(&harness.backends, &completed, &upload).await;
    assert_eq!(completed.previous_runs.len(), 1, "the failed run is kept");
    let past = &completed.previous_runs[0];
    assert_eq!((past.run, past.error.as_ref().map(|e| e.code)), (1, Some(ErrorCode::RetriesExhausted)));
    assert_eq!(past.failed_at, failed.updated_at);
    assert_eq!(past.stages, failed.stages, "the failed run's stage record (attempts, times) is kept");

    // A third upload of the same bytes finds the job COMPLETED: nothing runs again.
    harness.submit("carol", "scan.nii.gz", upload.clone()).await;
    let ingest = harness.backends.queue(iris_core::keys::QueueRole::Ingest);
    let started = Instant::now();
    // (The first run's message stays in the dead-letter queue: only visible and in-flight count.)
    loop {
        let depth = ingest.depth().await.expect("depth");
        if depth.visible + depth.in_flight == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the ingest queue drains");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = harness.backends.jobs.get(&job_id).await.expect("get").expect("job");
    assert_eq!((settled.status, settled.run, settled.updated_at), (JobStatus::Completed, 2, completed.updated_at));
    pipeline.stop().await;

    // The transition history and the events: run 1 up to FAILED, then run 2 from RECEIVED, each
    // run's events with their own ids.
    let history: Vec<String> =
        harness.embedded.jobs.history(&job_id).await.expect("history").into_iter().map(|h| h.status).collect();
    let failed_at = history.iter().position(|s| s == "FAILED").expect("FAILED in the history");
    assert_eq!(history[failed_at + 1], "RECEIVED", "{history:?}");
    assert_eq!(history.last().map(String::as_str), Some("COMPLETED"), "{history:?}");
    let events = harness.embedded.events.published(&job_id).await.expect("events");
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert!(ids.contains(&format!("{job_id}:FAILED").as_str()), "{ids:?}");
    assert!(ids.contains(&format!("{job_id}:run2:RECEIVED").as_str()), "{ids:?}");
    assert!(ids.contains(&format!("{job_id}:run2:COMPLETED").as_str()), "{ids:?}");
}

/// Fault injection around the real directory store: the first time an upload's metadata is read,
/// the upload is overwritten right after (another client's PUT racing ingest's check and read).
struct ReplacedAfterCheck {
    inner: Arc<dyn ObjectStore>,
    replacement: Mutex<Option<Vec<u8>>>,
}

#[async_trait]
impl ObjectStore for ReplacedAfterCheck {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn put(&self, key: &ObjectKey, body: Vec<u8>, metadata: &ObjectMetadata) -> Result<ObjectInfo, PortError> {
        self.inner.put(key, body, metadata).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, PortError> {
        self.inner.get(key).await
    }
    async fn get_matching(&self, key: &ObjectKey, etag: &str, max_bytes: u64) -> Result<Vec<u8>, PortError> {
        self.inner.get_matching(key, etag, max_bytes).await
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, PortError> {
        let checked = self.inner.head(key).await?;
        let replacement = self.replacement.lock().unwrap().take();
        if let Some(body) = replacement.filter(|_| key.as_str().starts_with("uploads/")) {
            self.inner.put(key, body, &ObjectMetadata::new()).await?;
        }
        Ok(checked)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PortError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_replaced_between_its_check_and_its_read_fails_and_the_replacement_is_its_own_job() {
    let mut harness = Harness::new(&[]);
    let upload = small_phantom();
    // The same CT with another gzip header (the OS byte): other bytes, other ETag, same voxels.
    let mut replacement = upload.clone();
    replacement[9] = if replacement[9] == 3 { 255 } else { 3 };
    let store = Arc::new(ReplacedAfterCheck {
        inner: Arc::clone(&harness.backends.objects),
        replacement: Mutex::new(Some(replacement.clone())),
    });
    harness.backends.objects = store.clone();
    let pipeline = harness.start().await;

    let first = harness.submit("erin", "scan.nii.gz", upload).await;
    let failed =
        wait_until(&harness.backends, &first, "the first upload's job to end", |j| j.status.is_terminal()).await;
    let error = failed.error.expect("the checked bytes are gone: the job fails");
    assert_eq!(error.code, ErrorCode::UploadReplaced, "{error:?}");
    assert!(store.replacement.lock().unwrap().is_none(), "the replacement was written");

    let second = iris_core::job::UploadSource {
        bucket: harness.backends.objects.bucket().to_owned(),
        key: "uploads/erin/scan.nii.gz".into(),
        etag: iris_embedded::DirectoryObjectStore::etag_for(&replacement),
        version_id: None,
    }
    .job_id();
    assert_ne!(second, first);
    let completed = wait_until(&harness.backends, &second, "the replacement's job", |j| j.status.is_terminal()).await;
    check_completed_job(&harness.backends, &completed, &replacement).await;
    pipeline.stop().await;
}
