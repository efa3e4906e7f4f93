//! The core's integration tests, by area: the worker runtime on the real embedded queue and job
//! table (`runtime`), and the contracts the README documents (`documented_contracts`).

/// The worker runtime, on the real embedded queue and job store. The handlers below are stand-in
/// stages whose behaviour is the point of each test (always failing, panicking, slow); the queue,
/// job table and event bus they run against are the real ones.
mod runtime {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use iris_core::ErrorCode;
    use iris_core::config::IrisConfig;
    use iris_core::ids::JobId;
    use iris_core::ids::UserId;
    use iris_core::job::{JobRecord, JobStatus, Stage, UploadSource};
    use iris_core::keys::QueueRole;
    use iris_core::ports::{JobStore, ReceivedMessage, WorkQueue};
    use iris_core::runtime::{MessageHandler, Outcome, WorkerSettings, run_worker};
    use iris_core::time::Timestamp;
    use iris_embedded::EmbeddedBackends;
    use tokio_util::sync::CancellationToken;

    enum Behaviour {
        AlwaysRetry,
        Panic,
        Reject,
        SlowThenDone(Duration),
        /// Blocking work (as a decoder's) that runs until its message's token is cancelled, then
        /// raises the flag.
        BlockingUntilCancelled(Arc<std::sync::atomic::AtomicBool>),
    }

    struct StandInStage {
        job_id: JobId,
        behaviour: Behaviour,
        calls: AtomicU32,
    }

    #[async_trait]
    impl MessageHandler for StandInStage {
        fn name(&self) -> &'static str {
            "stand-in"
        }

        async fn process_one(&self, _message: &ReceivedMessage) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match &self.behaviour {
                Behaviour::AlwaysRetry => Outcome::Retry { reason: "backend unavailable".into() },
                Behaviour::Panic => panic!("stand-in stage bug"),
                Behaviour::Reject => Outcome::Reject { reason: "malformed".into() },
                Behaviour::SlowThenDone(pause) => {
                    tokio::time::sleep(*pause).await;
                    Outcome::Done
                }
                Behaviour::BlockingUntilCancelled(stopped) => {
                    let (token, stopped) = (iris_core::cancel::current(), Arc::clone(stopped));
                    let work = tokio::task::spawn_blocking(move || {
                        iris_core::cancel::run_cancellable(token, || {
                            let started = std::time::Instant::now();
                            // Bounded so that a broken runtime fails the test instead of hanging it.
                            while iris_core::cancel::check().is_ok() && started.elapsed() < Duration::from_secs(30) {
                                std::hint::black_box((0..10_000u64).sum::<u64>());
                            }
                            stopped.store(iris_core::cancel::is_cancelled(), Ordering::SeqCst);
                        })
                    });
                    let _ = work.await;
                    Outcome::Done
                }
            }
        }

        fn job_of(&self, _message: &ReceivedMessage) -> Option<(JobId, Option<Stage>)> {
            Some((self.job_id.clone(), Some(Stage::Segment)))
        }
    }

    fn settings() -> WorkerSettings {
        WorkerSettings {
            concurrency: 1,
            visibility_timeout: Duration::from_millis(600),
            heartbeat_interval: Duration::from_millis(200),
            receive_wait: Duration::from_millis(200),
            max_attempts: 3,
            retry_backoff_base: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(200),
            processing_limit: Duration::from_secs(10),
        }
    }

    async fn job(backends: &EmbeddedBackends) -> JobId {
        let upload =
            UploadSource { bucket: "b".into(), key: "uploads/u/x.nii.gz".into(), etag: "e".into(), version_id: None };
        let record = JobRecord::received(&upload, UserId::parse("u").unwrap(), BTreeMap::new(), Timestamp::now());
        backends.jobs.create_if_absent(&record).await.unwrap();
        record.job_id
    }

    async fn run_until(
        backends: &EmbeddedBackends,
        handler: Arc<StandInStage>,
        done: impl Fn() -> bool,
    ) -> Arc<StandInStage> {
        let shutdown = CancellationToken::new();
        let ports = backends.ports();
        let worker = tokio::spawn(run_worker(
            handler.clone(),
            ports.queue(QueueRole::Segment),
            ports.ledger(),
            settings(),
            shutdown.clone(),
        ));
        for _ in 0..200 {
            if done() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        worker.await.unwrap();
        handler
    }

    /// The embedded backends in a temporary data directory, with three attempts per message.
    fn open() -> (tempfile::TempDir, EmbeddedBackends) {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().to_owned();
        let config = IrisConfig::from_lookup(|name| match name {
            "IRIS_DATA_DIR" => Some(path.display().to_string()),
            "IRIS_MAX_ATTEMPTS" => Some("3".to_owned()),
            _ => None,
        })
        .expect("config");
        let backends = EmbeddedBackends::open(&config).expect("open embedded backends");
        (directory, backends)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_that_always_fails_is_dead_lettered_and_its_job_fails_with_retries_exhausted() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("work").await.unwrap();
        let handler = Arc::new(StandInStage {
            job_id: job_id.clone(),
            behaviour: Behaviour::AlwaysRetry,
            calls: AtomicU32::new(0),
        });
        let probe = queue.clone();
        let handler = run_until(&backends, handler, move || {
            block_on_inside_test(probe.depth()).map(|d| d.dead_lettered == 1).unwrap_or(false)
        })
        .await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "tried max_attempts times");
        let depth = queue.depth().await.unwrap();
        assert_eq!((depth.visible, depth.in_flight, depth.dead_lettered), (0, 0, 1));
        let record = backends.jobs.get(&job_id).await.unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Failed);
        let error = record.error.unwrap();
        assert_eq!(error.code, ErrorCode::RetriesExhausted);
        assert_eq!(error.stage, Some(Stage::Segment));
        let events = backends.events.published(&job_id).await.unwrap();
        assert_eq!(events.last().unwrap().detail_type, "JobFailed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_redelivered_past_its_attempts_after_crashes_is_given_up_without_running() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("work that crashes its worker").await.unwrap();
        // Three workers received it and died without acking (a crash loop).
        for _ in 0..3 {
            let got = queue.receive(1, Duration::from_millis(100), Duration::from_secs(2)).await.unwrap();
            assert_eq!(got.len(), 1);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let handler = Arc::new(StandInStage {
            job_id: job_id.clone(),
            behaviour: Behaviour::SlowThenDone(Duration::ZERO),
            calls: AtomicU32::new(0),
        });
        let probe = queue.clone();
        let handler = run_until(&backends, handler, move || {
            block_on_inside_test(probe.depth()).map(|d| d.dead_lettered == 1).unwrap_or(false)
        })
        .await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 0, "the fourth delivery is not processed");
        let record = backends.jobs.get(&job_id).await.unwrap().unwrap();
        assert_eq!(record.error.unwrap().code, ErrorCode::RetriesExhausted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_fails_the_job_and_the_worker_keeps_serving() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("one").await.unwrap();
        queue.send("two").await.unwrap();
        let handler =
            Arc::new(StandInStage { job_id: job_id.clone(), behaviour: Behaviour::Panic, calls: AtomicU32::new(0) });
        let probe = queue.clone();
        let handler = run_until(&backends, handler, move || {
            block_on_inside_test(probe.depth()).map(|d| d.visible + d.in_flight == 0).unwrap_or(false)
        })
        .await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 2, "the worker survived the first panic");
        let record = backends.jobs.get(&job_id).await.unwrap().unwrap();
        assert_eq!(record.error.unwrap().code, ErrorCode::InternalError);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_message_goes_straight_to_the_dead_letter_queue() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("{not json").await.unwrap();
        let handler =
            Arc::new(StandInStage { job_id: job_id.clone(), behaviour: Behaviour::Reject, calls: AtomicU32::new(0) });
        let probe = queue.clone();
        run_until(&backends, handler, move || {
            block_on_inside_test(probe.depth()).map(|d| d.dead_lettered == 1).unwrap_or(false)
        })
        .await;
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!(letters, vec![("{not json".to_owned(), "malformed".to_owned())]);
        assert_eq!(backends.jobs.get(&job_id).await.unwrap().unwrap().status, JobStatus::Received, "job untouched");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_in_flight_work_and_heartbeats_keep_it_from_redelivery() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("slow").await.unwrap();
        // Work lasts three visibility timeouts; only heartbeats keep it from being redelivered.
        let handler = Arc::new(StandInStage {
            job_id,
            behaviour: Behaviour::SlowThenDone(Duration::from_millis(1800)),
            calls: AtomicU32::new(0),
        });
        let shutdown = CancellationToken::new();
        let ports = backends.ports();
        let worker = tokio::spawn(run_worker(
            handler.clone(),
            ports.queue(QueueRole::Segment),
            ports.ledger(),
            settings(),
            shutdown.clone(),
        ));
        while handler.calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        worker.await.unwrap();
        assert_eq!(handler.calls.load(Ordering::SeqCst), 1, "processed once, never redelivered meanwhile");
        let depth = queue.depth().await.unwrap();
        assert_eq!((depth.visible, depth.in_flight, depth.dead_lettered), (0, 0, 0), "acked after finishing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_past_the_processing_limit_fails_the_job_with_timed_out() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        let queue = backends.queues[&QueueRole::Segment].clone();
        queue.send("endless").await.unwrap();
        let handler = Arc::new(StandInStage {
            job_id: job_id.clone(),
            behaviour: Behaviour::SlowThenDone(Duration::from_secs(600)),
            calls: AtomicU32::new(0),
        });
        let shutdown = CancellationToken::new();
        let ports = backends.ports();
        let limited = WorkerSettings { processing_limit: Duration::from_millis(700), ..settings() };
        let worker = tokio::spawn(run_worker(
            handler.clone(),
            ports.queue(QueueRole::Segment),
            ports.ledger(),
            limited,
            shutdown.clone(),
        ));
        let started = std::time::Instant::now();
        loop {
            let record = backends.jobs.get(&job_id).await.unwrap().unwrap();
            if record.status == JobStatus::Failed {
                assert_eq!(record.error.unwrap().code, ErrorCode::TimedOut);
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the limit was not enforced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        worker.await.unwrap();
        assert_eq!(
            queue.depth().await.unwrap().visible + queue.depth().await.unwrap().in_flight,
            0,
            "the message was settled"
        );
    }

    /// The processing limit cancels the message's token: blocking work that checks it stops,
    /// instead of burning CPU after the job failed `timed_out` (aborting the task cannot stop it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_work_past_the_processing_limit_is_cancelled_not_left_running() {
        let (_dir, backends) = open();
        let job_id = job(&backends).await;
        backends.queues[&QueueRole::Segment].send("endless").await.unwrap();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = Arc::new(StandInStage {
            job_id: job_id.clone(),
            behaviour: Behaviour::BlockingUntilCancelled(Arc::clone(&stopped)),
            calls: AtomicU32::new(0),
        });
        let shutdown = CancellationToken::new();
        let ports = backends.ports();
        let limited = WorkerSettings { processing_limit: Duration::from_millis(500), ..settings() };
        let worker = tokio::spawn(run_worker(
            handler.clone(),
            ports.queue(QueueRole::Segment),
            ports.ledger(),
            limited,
            shutdown.clone(),
        ));
        let started = std::time::Instant::now();
        while !stopped.load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(20), "the blocking work was never cancelled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = loop {
            let record = backends.jobs.get(&job_id).await.unwrap().unwrap();
            if record.status.is_terminal() || started.elapsed() > Duration::from_secs(20) {
                break record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(record.error.map(|e| e.code), Some(ErrorCode::TimedOut));
        shutdown.cancel();
        worker.await.unwrap();
    }

    /// Runs a future to completion from a synchronous predicate (the polling loop above).
    fn block_on_inside_test<F: std::future::Future>(future: F) -> F::Output {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
    }
}

/// What the README promises users, checked against the one typed source of each contract.
mod documented_contracts {
    use iris_core::ErrorCode;

    fn readme() -> String {
        let root = iris_core::testing::repository_root(env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(root.join("README.md")).expect("README.md at the repository root")
    }

    /// The first cells of the table under `heading`, in order.
    fn first_column_of_table_after(markdown: &str, heading: &str) -> Vec<String> {
        let section = markdown.split_once(heading).map(|(_, rest)| rest).expect("the README has the section");
        section
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .filter_map(|line| line.split('|').nth(1))
            .map(|cell| cell.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn the_readme_error_table_lists_exactly_the_error_codes_in_their_order() {
        let documented = first_column_of_table_after(&readme(), "## Job states and errors");
        let codes: Vec<String> = ErrorCode::ALL.iter().map(|code| code.as_str().to_owned()).collect();
        assert_eq!(documented, codes, "README.md's error table and ErrorCode disagree");
    }
}
