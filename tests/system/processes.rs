//! The binaries as a user runs them: `iris process` exit codes, `iris run` killed mid-job, one
//! process per service on one data directory, the inbox and `iris watch`.

use crate::support::*;

fn spawn_quiet(command: &mut Command) -> Child {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn")
}

#[test]
fn process_command_exits_one_and_reports_the_error_code_for_a_bad_file() {
    let directory = tempfile::tempdir().unwrap();
    let bad = directory.path().join("report.nii.gz");
    std::fs::write(&bad, "not an image").unwrap();
    let output = Command::new(iris_binary())
        .args(["process", bad.to_str().unwrap(), "--json", "--out", directory.path().join("out").to_str().unwrap()])
        .env("IRIS_DATA_DIR", directory.path().join("data"))
        .output()
        .expect("run iris process");
    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(record["status"], "FAILED");
    assert_eq!(record["error"]["code"], "unsupported_format");
    assert!(record["error"]["message"].as_str().unwrap().contains("NIfTI"));
}

/// Waits for a condition on the data directory shared with child processes.
async fn poll_until<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_job_the_pipeline_completes_it_once_with_identical_outputs() {
    let upload = small_phantom();
    // An undisturbed run for reference.
    let reference = Harness::new(&[]);
    let pipeline = reference.start().await;
    let job_id = reference.submit("local", "crash.nii.gz", upload.clone()).await;
    assert_eq!(reference.wait(&job_id).await.status, JobStatus::Completed);
    pipeline.stop().await;
    let expected = reference.outputs(&job_id).await;

    // `iris run` as a child process; each stage pauses after writing its outputs, before recording
    // itself finished, which is where a crash hurts most. SIGKILL it while a stage is in flight.
    let directory = tempfile::tempdir().unwrap();
    let launch = |pause: &str| {
        let mut command = Command::new(iris_binary());
        command
            .arg("run")
            .env("IRIS_DATA_DIR", directory.path())
            .env("IRIS_WS_BIND", "127.0.0.1:0")
            .env("IRIS_VISIBILITY_TIMEOUT_SECS", "2")
            .env("IRIS_FAULT_PAUSE_BEFORE_FINISH_MS", pause)
            .env("RUST_LOG", "warn");
        KillOnDrop(spawn_quiet(&mut command))
    };
    let mut first = launch("700");
    let gateway_file = directory.path().join("gateway.json");
    poll_until("iris run to start", Duration::from_secs(60), async || gateway_file.is_file().then_some(())).await;
    let config = config_for(directory.path(), &[]);
    let backends = EmbeddedBackends::open(&config).unwrap();
    let submitted = submit_bytes(
        backends.objects.as_ref(),
        &UserId::parse("local").unwrap(),
        "crash.nii.gz",
        upload,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    assert_eq!(submitted.job_id, job_id, "deterministic job id across data directories");
    let killed_at = poll_until("a stage in flight", Duration::from_secs(60), async || {
        let job = backends.jobs.get(&job_id).await.ok().flatten()?;
        (job.status.rank() >= JobStatus::Segmenting.rank()).then_some(job.status)
    })
    .await;
    assert!(!killed_at.is_terminal(), "killed mid-job, at {killed_at}");
    eprintln!("SIGKILL while the job was {killed_at}");
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();

    let _second = launch("0");
    let finished = poll_until("the job to end after the restart", Duration::from_secs(120), async || {
        backends.jobs.get(&job_id).await.ok().flatten().filter(|job| job.status.is_terminal())
    })
    .await;
    assert_eq!(finished.status, JobStatus::Completed, "{:?}", finished.error);
    assert!(
        finished.stages.values().any(|stage| stage.attempts >= 2),
        "the interrupted stage ran again: {:?}",
        finished.stages
    );
    let history = backends.jobs.history(&job_id).await.unwrap();
    assert_eq!(history.iter().filter(|h| h.status == "COMPLETED").count(), 1, "COMPLETED exactly once");
    let statuses: Vec<&str> = history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(statuses, LADDER, "the ladder, in order, each status once");
    for event in backends.events.published(&job_id).await.unwrap() {
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        let status = body["detail"]["status"].as_str().unwrap();
        assert_eq!(event.event_id, format!("{job_id}:{status}"), "a repeated event carries the same id");
    }
    let mut actual = BTreeMap::new();
    for object in backends.objects.list(&format!("jobs/{job_id}/")).await.unwrap() {
        actual.insert(object.key.to_string(), backends.objects.get(&object.key).await.unwrap());
    }
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (key, bytes) in &expected {
        assert!(actual[key] == *bytes, "{key} differs from the undisturbed run");
    }
    // Nothing left in flight, nothing dead-lettered.
    poll_until("queues to drain", Duration::from_secs(30), async || {
        let mut busy = 0;
        for queue in backends.queues.values() {
            let depth = queue.depth().await.ok()?;
            assert_eq!(depth.dead_lettered, 0, "{} has dead letters", queue.name());
            busy += depth.visible + depth.in_flight;
        }
        (busy == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_as_its_own_process_on_one_data_directory() {
    let directory = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let services = [
        env!("CARGO_BIN_EXE_iris-ingest"),
        env!("CARGO_BIN_EXE_iris-segment"),
        env!("CARGO_BIN_EXE_iris-mesh"),
        env!("CARGO_BIN_EXE_iris-notify"),
    ];
    for service in services {
        let mut command = Command::new(service);
        command.env("IRIS_DATA_DIR", directory.path()).env("IRIS_WS_BIND", "127.0.0.1:0").env("RUST_LOG", "warn");
        children.push(KillOnDrop(spawn_quiet(&mut command)));
    }
    let config = config_for(directory.path(), &[]);
    let backends = EmbeddedBackends::open(&config).unwrap().ports();
    let upload = small_phantom();
    let submission = submit_bytes(
        backends.objects.as_ref(),
        &UserId::parse("local").unwrap(),
        "multi.nii.gz",
        upload,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    // SIGTERM: each service finishes and exits cleanly.
    for child in &mut children {
        let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
    for child in &mut children {
        let started = Instant::now();
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert!(status.success(), "service exited with {status}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "service did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_in_the_inbox_is_processed_and_watch_prints_its_states() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let inbox = directory.path().join("inbox");
    let mut run = Command::new(iris_binary());
    run.args(["run", "--inbox", inbox.to_str().unwrap()])
        .env("IRIS_DATA_DIR", &data)
        .env("IRIS_WS_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    let _server = KillOnDrop(spawn_quiet(&mut run));
    let gateway_file = data.join("gateway.json");
    poll_until("iris run to start", Duration::from_secs(60), async || gateway_file.is_file().then_some(())).await;
    poll_until("the inbox to exist", Duration::from_secs(10), async || inbox.join("submitted").is_dir().then_some(()))
        .await;

    let upload = small_phantom();
    let config = config_for(&data, &[]);
    let job_id =
        JobId::derive(&config.bucket, "uploads/local/dropped scan.nii.gz", &DirectoryObjectStore::etag_for(&upload));
    let watch = Command::new(iris_binary())
        .args(["watch", job_id.as_str()])
        .env("IRIS_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iris watch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Written under a hidden name, then renamed: the inbox never sees a half-written file.
    std::fs::write(inbox.join(".partial"), &upload).unwrap();
    std::fs::rename(inbox.join(".partial"), inbox.join("dropped scan.nii.gz")).unwrap();

    let output = tokio::task::spawn_blocking(move || watch.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0), "watch stderr: {}", String::from_utf8_lossy(&output.stderr));
    let statuses: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["type"] == "jobState")
        .map(|message| message["event"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.last().map(String::as_str), Some("COMPLETED"), "{statuses:?}");
    let ranks: Vec<usize> = statuses.iter().map(|s| LADDER.iter().position(|l| l == s).unwrap()).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "states in order: {statuses:?}");
    assert!(inbox.join("submitted").join("dropped scan.nii.gz").is_file(), "moved out of the inbox once uploaded");

    let status = Command::new(iris_binary())
        .args(["status", job_id.as_str(), "--json"])
        .env("IRIS_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0));
    let record: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(record["status"], "COMPLETED");
    assert_eq!(record["sourceKeyDigest"], iris_core::job::source_key_digest("", "uploads/local/dropped scan.nii.gz"));
}
