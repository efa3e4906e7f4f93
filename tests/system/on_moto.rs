//! The same pipeline on the AWS backends, against moto server (S3 notifications to SQS, SQS,
//! DynamoDB, EventBridge rules to SQS). Needs a moto server (`scripts/test.sh` starts one and sets
//! IRIS_MOTO_URL); without one the tests skip with a message.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use iris::{start_pipeline, submit_bytes, wait_for_job};
use iris_aws::{bootstrap, local};
use iris_core::ErrorCode;
use iris_core::config::IrisConfig;
use iris_core::events::EventEnvelope;
use iris_core::ids::UserId;
use iris_core::job::{JobStatus, Stage};
use iris_core::keys::QueueRole;
use iris_core::ports::WorkQueue;
use iris_core::s3_event::object_created_notification;
use iris_core::time::Timestamp;
use tokio::net::TcpListener;

use crate::support::{LADDER, check_completed_job, small_phantom};

/// A fresh, bootstrapped deployment on the test moto server (with an observer queue fed by its
/// own EventBridge rule when asked), or `None` (skipped) without a moto server.
async fn setup(test: &str, observer: bool) -> Option<Deployment> {
    let moto_url = iris_core::testing::moto_url(test)?;
    let clients = local::clients_for_endpoint(&moto_url).await;
    let prefix = local::unique_prefix();
    let config = local::isolated_config(
        &prefix,
        &[("IRIS_MAX_ATTEMPTS", "2"), ("IRIS_VISIBILITY_TIMEOUT_SECS", "5"), ("IRIS_RETRY_BACKOFF_MS", "200")],
    )
    .unwrap();
    bootstrap::bootstrap(&config, &clients).await.expect("bootstrap");
    let observer = if observer {
        // An integration's queue, fed by its own EventBridge rule.
        let name = format!("{prefix}-observer");
        bootstrap::create_plain_queue(&clients, &name).await.unwrap();
        bootstrap::route_events_to_queue(&config, &clients, &name).await.unwrap();
        // Its dead-letter twin, which SqsWorkQueue::open expects.
        bootstrap::create_plain_queue(&clients, &format!("{name}-dlq")).await.unwrap();
        Some(iris_aws::SqsWorkQueue::open(clients.sqs.clone(), &name).await.unwrap())
    } else {
        None
    };
    Some(Deployment { config, clients, observer, moto_url })
}

struct Deployment {
    config: IrisConfig,
    clients: iris_aws::AwsClients,
    observer: Option<iris_aws::SqsWorkQueue>,
    moto_url: String,
}

/// Every event on the observer queue until `quiet` passes without one.
async fn drain_events(queue: &iris_aws::SqsWorkQueue, quiet: Duration) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    loop {
        let batch = queue.receive(10, Duration::from_secs(30), quiet).await.unwrap();
        if batch.is_empty() {
            return events;
        }
        for message in batch {
            events.push(serde_json::from_str(&message.body).expect("an EventBridge envelope"));
            queue.ack(&message.receipt).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_flows_through_s3_sqs_dynamodb_and_eventbridge_and_a_duplicate_event_changes_nothing() {
    const TEST: &str = "an_upload_flows_through_s3_sqs_dynamodb_and_eventbridge_and_a_duplicate_event_changes_nothing";
    let Some(Deployment { config, clients, observer, .. }) = setup(TEST, true).await else { return };
    let observer = observer.unwrap();
    let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
    let pipeline = start_pipeline(&backends, &config, TcpListener::bind(("127.0.0.1", 0)).await.unwrap()).unwrap();
    let upload = small_phantom();
    let user = UserId::parse("alice").unwrap();
    let submission = submit_bytes(backends.objects.as_ref(), &user, "my scan.nii.gz", upload.clone(), &BTreeMap::new())
        .await
        .unwrap();
    let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(120), |_| {}).await.unwrap();
    check_completed_job(&backends, &job, &upload).await;
    assert_eq!(job.user_id, user);

    let events = drain_events(&observer, Duration::from_secs(3)).await;
    // Events may repeat (same stable id); an integration keeps the first of each id.
    let mut seen_ids = std::collections::BTreeSet::new();
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| seen_ids.insert(e.detail.event_id.clone()))
        .map(|e| e.detail.status.as_str())
        .collect();
    assert_eq!(statuses, LADDER, "every state change reached the integration's queue, in order");
    assert_eq!(events.iter().filter(|e| e.detail_type.as_str() == "JobCompleted").count(), 1);
    assert!(events.iter().all(|e| e.source == "iris.pipeline" && e.detail.job_id == job.job_id));

    // The same S3 event delivered again (at-least-once): no second job, no second JobCompleted.
    let head = backends.objects.head(&submission.key).await.unwrap().unwrap();
    let duplicate = object_created_notification(
        &config.bucket,
        submission.key.as_str(),
        head.size,
        &head.etag,
        "uploads-to-ingest",
        Timestamp::now(),
        1,
    );
    let ingest = backends.queue(QueueRole::Ingest);
    ingest.send(&serde_json::to_string(&duplicate).unwrap()).await.unwrap();
    ingest.send(&serde_json::to_string(&duplicate).unwrap()).await.unwrap();
    let started = Instant::now();
    loop {
        let depth = ingest.depth().await.unwrap();
        if depth.visible + depth.in_flight == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "duplicates not consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = drain_events(&observer, Duration::from_secs(2)).await;
    assert!(later.is_empty(), "a duplicate event produced {later:?}");
    assert_eq!(backends.jobs.get(&job.job_id).await.unwrap().unwrap(), job, "the job is untouched");
    assert_eq!(backends.jobs.list_by_user(&user, 10).await.unwrap().len(), 1, "one job per upload");
    pipeline.stop().await;
}

/// JobCompleted published on EventBridge reaches the notify queue through the bus's rule, and
/// the notify service posts it to the subscribed connection through the API Gateway
/// Management API endpoint (moto's; a post moto refused would fail the delivery and release
/// the subscription's rank, so the advanced rank proves the post was accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completed_goes_through_eventbridge_and_sqs_and_is_posted_through_the_management_api() {
    const TEST: &str = "job_completed_goes_through_eventbridge_and_sqs_and_is_posted_through_the_management_api";
    use iris_core::events::JobEventDetail;
    use iris_core::job::{JobRecord, UploadSource};
    use iris_core::ports::Connection;
    let Some(Deployment { config, clients, moto_url, .. }) = setup(TEST, false).await else { return };
    let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
    let user = UserId::parse("alice").unwrap();
    let upload = UploadSource {
        bucket: config.bucket.clone(),
        key: "uploads/alice/a.nii.gz".into(),
        etag: "e".into(),
        version_id: None,
    };
    let mut job = JobRecord::received(&upload, user.clone(), BTreeMap::new(), Timestamp::now());
    job.status = JobStatus::Completed;
    let connection_id = "moto-connection-1=";
    backends
        .connections
        .add_connection(&Connection {
            connection_id: connection_id.into(),
            user_id: user,
            connected_at: Timestamp::now(),
        })
        .await
        .unwrap();
    backends.connections.subscribe(connection_id, &job.job_id).await.unwrap();

    backends.events.publish(&[EventEnvelope::new(JobEventDetail::from_job(&job))]).await.unwrap();
    let notify_queue = backends.queue(QueueRole::Notify);
    let started = Instant::now();
    let message = loop {
        let mut batch = notify_queue.receive(1, Duration::from_secs(30), Duration::from_secs(2)).await.unwrap();
        if let Some(message) = batch.pop() {
            break message;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the rule did not deliver JobCompleted");
    };
    let envelope: EventEnvelope = serde_json::from_str(&message.body).expect("an EventBridge envelope");
    assert_eq!(envelope.detail_type.as_str(), "JobCompleted");
    assert_eq!(envelope.detail.job_id, job.job_id);

    let gateway = std::sync::Arc::new(iris_aws::ApiGatewayConnectionGateway::new(&clients.sdk_config, &moto_url));
    let core =
        std::sync::Arc::new(iris_notify::NotifyCore::new(backends.jobs.clone(), backends.connections.clone(), gateway));
    let handler = iris_notify::NotifyHandler::new(core);
    let outcome = iris_core::runtime::MessageHandler::process_one(&handler, &message).await;
    assert!(matches!(outcome, iris_core::runtime::Outcome::Done), "{outcome:?}");
    notify_queue.ack(&message.receipt).await.unwrap();
    let subscription = backends.connections.subscribers(&job.job_id).await.unwrap().pop().expect("subscribed");
    assert_eq!(subscription.delivered_position, u32::from(JobStatus::Completed.rank()), "the post went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_crashing_its_worker_lands_in_the_dead_letter_queue_and_fails_the_job() {
    const TEST: &str = "a_message_that_keeps_crashing_its_worker_lands_in_the_dead_letter_queue_and_fails_the_job";
    let Some(Deployment { config, clients, .. }) = setup(TEST, false).await else { return };
    let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
    // Ingest only: the study stops at INGESTED with its segment message queued.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ingest = tokio::spawn({
        let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
        async move { iris_ingest::run_service(&backends, &config, shutdown).await }
    });
    let submission = submit_bytes(
        backends.objects.as_ref(),
        &UserId::parse("bob").unwrap(),
        "poison.nii.gz",
        small_phantom(),
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    while backends.jobs.get(&submission.job_id).await.unwrap().map(|j| j.status) != Some(JobStatus::Ingested) {
        assert!(started.elapsed() < Duration::from_secs(60), "ingest did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    ingest.await.unwrap();
    // Two segment workers take the message and die without acking (max attempts: 2).
    let segment = backends.queue(QueueRole::Segment);
    let mut deliveries = 0;
    while deliveries < 2 {
        let got = segment.receive(1, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.len(), 1, "the study's segment message is queued");
        if got[0].body.contains("s3:TestEvent") {
            // S3 (and moto) sends one when notifications are configured: a worker acks it.
            segment.ack(&got[0].receipt).await.unwrap();
            continue;
        }
        deliveries += 1;
        assert_eq!(got[0].receive_count, deliveries);
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    // The whole pipeline now gets the third delivery and gives the message up.
    let pipeline = start_pipeline(&backends, &config, TcpListener::bind(("127.0.0.1", 0)).await.unwrap()).unwrap();
    let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(60), |_| {}).await.unwrap();
    pipeline.stop().await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert_eq!(error.code, ErrorCode::RetriesExhausted);
    assert_eq!(error.stage, Some(Stage::Segment));
    assert_eq!(segment.depth().await.unwrap().dead_lettered, 1, "the message is in the dead-letter queue");
}

/// Records what is posted to each connection, then posts it through the real gateway (moto's API
/// Gateway Management API): the recording is how the test sees what a subscriber received, which
/// moto does not keep.
struct RecordingGateway {
    inner: iris_aws::ApiGatewayConnectionGateway,
    posts: std::sync::Mutex<Vec<(String, serde_json::Value)>>,
}

#[async_trait::async_trait]
impl iris_core::ports::ConnectionGateway for RecordingGateway {
    async fn post_to_connection(&self, connection_id: &str, payload: &str) -> Result<(), iris_core::ports::PortError> {
        self.inner.post_to_connection(connection_id, payload).await?;
        let value = serde_json::from_str(payload).expect("JSON payload");
        self.posts.lock().unwrap().push((connection_id.to_owned(), value));
        Ok(())
    }
}

/// SQS standard queues reorder and can lose a message to its dead-letter queue: the job's state
/// events reach notify shuffled, one repeated, and the final one never. Every subscriber still
/// gets every state of the job once, in order, ending with COMPLETED: notify reads the job record
/// with each event and sends what the subscriber has not had (`NotifyCore::deliver`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_lost_state_events_still_give_every_subscriber_every_state_in_order_and_the_final_one() {
    const TEST: &str =
        "reordered_and_lost_state_events_still_give_every_subscriber_every_state_in_order_and_the_final_one";
    use iris_core::events::JobEventDetail;
    use iris_core::job::{JobRecord, Transition, UploadSource};
    use iris_core::ports::{Connection, TransitionOutcome};
    use rand::seq::SliceRandom;
    let Some(Deployment { config, clients, moto_url, .. }) = setup(TEST, false).await else { return };
    let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
    let user = UserId::parse("alice").unwrap();
    let upload = UploadSource {
        bucket: config.bucket.clone(),
        key: "uploads/alice/reordered.nii.gz".into(),
        etag: "e".into(),
        version_id: None,
    };
    let job = JobRecord::received(&upload, user.clone(), BTreeMap::new(), Timestamp::now());
    assert!(backends.jobs.create_if_absent(&job).await.unwrap());
    let connections = ["moto-first=", "moto-second="];
    for connection_id in connections {
        let connection =
            Connection { connection_id: connection_id.into(), user_id: user.clone(), connected_at: Timestamp::now() };
        backends.connections.add_connection(&connection).await.unwrap();
        backends.connections.subscribe(connection_id, &job.job_id).await.unwrap();
    }
    // The stages' transitions, each with the event it publishes.
    let mut events = vec![JobEventDetail::from_job(&job)];
    for status in &JobStatus::ALL[1..7] {
        let transition = Transition::to(*status, Timestamp::now(), 1);
        let TransitionOutcome::Applied(next) = backends.jobs.transition(&job.job_id, &transition).await.unwrap() else {
            panic!("{status} applies");
        };
        events.push(JobEventDetail::from_job(&next));
    }
    assert_eq!(events.last().unwrap().status, JobStatus::Completed);
    // Delivery as SQS may do it: shuffled, one repeated, the final state lost.
    let mut delivered: Vec<JobEventDetail> = events[..events.len() - 1].to_vec();
    let mut random = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(24);
    delivered.shuffle(&mut random);
    delivered.push(delivered[0].clone());
    for event in &delivered {
        backends.events.publish(&[EventEnvelope::new(event.clone())]).await.unwrap();
    }
    let gateway = std::sync::Arc::new(RecordingGateway {
        inner: iris_aws::ApiGatewayConnectionGateway::new(&clients.sdk_config, &moto_url),
        posts: std::sync::Mutex::new(Vec::new()),
    });
    let core = std::sync::Arc::new(iris_notify::NotifyCore::new(
        backends.jobs.clone(),
        backends.connections.clone(),
        gateway.clone(),
    ));
    let handler = iris_notify::NotifyHandler::new(core);
    let notify_queue = backends.queue(QueueRole::Notify);
    let started = Instant::now();
    let mut handled = 0;
    while handled < delivered.len() {
        assert!(started.elapsed() < Duration::from_secs(60), "the rule delivered {handled} of {}", delivered.len());
        for message in notify_queue.receive(10, Duration::from_secs(30), Duration::from_secs(2)).await.unwrap() {
            let outcome = iris_core::runtime::MessageHandler::process_one(&handler, &message).await;
            assert!(matches!(outcome, iris_core::runtime::Outcome::Done), "{outcome:?}");
            notify_queue.ack(&message.receipt).await.unwrap();
            handled += 1;
        }
    }
    let posts = gateway.posts.lock().unwrap().clone();
    for connection_id in connections {
        let received: Vec<(u32, String)> = posts
            .iter()
            .filter(|(to, _)| to == connection_id)
            .map(|(_, payload)| {
                assert_eq!(payload["type"], "jobState", "{payload}");
                let event: JobEventDetail = serde_json::from_value(payload["event"].clone()).expect("event");
                (event.delivery_position(), event.event_id)
            })
            .collect();
        let expected: Vec<(u32, String)> = events.iter().map(|e| (e.delivery_position(), e.event_id.clone())).collect();
        assert_eq!(received, expected, "{connection_id}: every state once, in order, the final one included");
    }
    for subscription in backends.connections.subscribers(&job.job_id).await.unwrap() {
        assert_eq!(subscription.delivered_position, u32::from(JobStatus::Completed.rank()));
    }
}
