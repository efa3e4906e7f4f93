//! The contract suite of every port: one function per port, run against every adapter (the
//! embedded ones in `adapters/embedded/tests/`, the AWS ones against moto in `adapters/aws/tests/`). Each function
//! panics with a message on the first broken promise, like a test.
//!
//! Adapters must be fresh (empty) when handed in, except where a function says otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error_code::ErrorCode;
use crate::events::{EventEnvelope, JobEventDetail};
use crate::ids::{JobId, UserId};
use crate::job::{JobRecord, JobStatus, Stage, Transition, UploadSource};
use crate::keys::ObjectKey;
use crate::ports::{
    Connection, ConnectionStore, EventBus, JobStore, ObjectStore, PortError, TransitionOutcome, WorkQueue,
};
use crate::time::Timestamp;

fn key(text: &str) -> ObjectKey {
    ObjectKey::parse(text).expect("contract keys are valid")
}

/// Put, get, head with user metadata, overwrite, list by prefix, missing objects.
pub async fn object_store_contract(store: &dyn ObjectStore) {
    let metadata =
        BTreeMap::from([("fast".to_owned(), "true".to_owned()), ("reduction-percent".to_owned(), "75".to_owned())]);
    let first = key("contract/a/scan 1.nii.gz");
    let info = store.put(&first, b"first body".to_vec(), &metadata).await.expect("put");
    assert_eq!(info.size, 10);
    assert_eq!(store.get(&first).await.expect("get"), b"first body");
    let head = store.head(&first).await.expect("head").expect("object exists");
    assert_eq!(head.metadata, metadata, "user metadata round-trips");
    assert_eq!(head.size, 10);
    assert_eq!(head.etag, info.etag);

    let replaced = store.put(&first, b"second body!".to_vec(), &BTreeMap::new()).await.expect("overwrite");
    assert_ne!(replaced.etag, info.etag, "new content, new ETag");
    assert_eq!(store.get(&first).await.expect("get"), b"second body!");
    assert!(store.head(&first).await.expect("head").expect("exists").metadata.is_empty());
    let same = store.put(&first, b"second body!".to_vec(), &BTreeMap::new()).await.expect("put same");
    assert_eq!(same.etag, replaced.etag, "same content, same ETag");

    // Conditional, bounded reads.
    assert_eq!(store.get_matching(&first, &same.etag, 12).await.expect("matching"), b"second body!");
    assert!(
        matches!(store.get_matching(&first, &info.etag, 1 << 20).await, Err(PortError::PreconditionFailed(_))),
        "the first body's ETag no longer matches: the replacement is not read"
    );
    assert!(
        matches!(store.get_matching(&first, &same.etag, 11).await, Err(PortError::TooLarge { limit: 11 })),
        "12 bytes are more than 11"
    );
    assert!(matches!(store.get_matching(&key("contract/absent"), &same.etag, 100).await, Err(PortError::NotFound(_))));

    for name in ["contract/a/b/deep.txt", "contract/a_/x", "contract/a%/y", "contract/b/z", "other/q"] {
        store.put(&key(name), name.as_bytes().to_vec(), &BTreeMap::new()).await.expect("put");
    }
    let listed: Vec<String> =
        store.list("contract/a/").await.expect("list").into_iter().map(|o| o.key.to_string()).collect();
    assert_eq!(listed, vec!["contract/a/b/deep.txt", "contract/a/scan 1.nii.gz"], "prefix is literal, keys sorted");
    let listed: Vec<String> =
        store.list("contract/a_").await.expect("list").into_iter().map(|o| o.key.to_string()).collect();
    assert_eq!(listed, vec!["contract/a_/x"], "'_' in a prefix is not a wildcard");

    let missing = key("contract/missing");
    assert!(matches!(store.get(&missing).await, Err(PortError::NotFound(_))), "get of a missing object is NotFound");
    assert!(store.head(&missing).await.expect("head").is_none());

    store.delete(&key("contract/b/z")).await.expect("delete");
    assert!(matches!(store.get(&key("contract/b/z")).await, Err(PortError::NotFound(_))), "a deleted object is gone");
    assert!(store.head(&key("contract/b/z")).await.expect("head").is_none());
    assert!(store.list("contract/b/").await.expect("list").is_empty(), "a deleted object is not listed");
    store.delete(&missing).await.expect("deleting a missing object is not an error");
    let kept: Vec<String> =
        store.list("contract/").await.expect("list").into_iter().map(|o| o.key.to_string()).collect();
    assert_eq!(kept.len(), 4, "deleting one object leaves the others: {kept:?}");
}

/// Send, receive, visibility timeout, redelivery, stale receipts, heartbeats, dead-lettering and the
/// redrive policy. `max_receive_count` is the queue's redrive setting (at least 2). Timeouts are whole
/// seconds, as SQS counts them.
pub async fn work_queue_contract(queue: &dyn WorkQueue, max_receive_count: u32) {
    assert!(max_receive_count >= 2);
    let short = Duration::from_secs(1);
    let past_short = Duration::from_millis(1400);
    let none = queue.receive(1, short, Duration::ZERO).await.expect("receive");
    assert!(none.is_empty(), "a fresh queue is empty");

    queue.send("one").await.expect("send");
    let first = queue.receive(1, short, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, "one");
    assert_eq!(first[0].receive_count, 1);
    assert!(queue.receive(1, short, Duration::ZERO).await.expect("receive").is_empty(), "invisible while in flight");
    assert_eq!(queue.depth().await.expect("depth").in_flight, 1);

    // Not acked: it comes back after the visibility timeout with a new receipt.
    tokio::time::sleep(past_short).await;
    let again = queue.receive(1, Duration::from_secs(30), Duration::from_secs(5)).await.expect("receive");
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt, first[0].receipt, "each delivery has its own receipt");
    // The old receipt is stale: refused, or (SQS) accepted without effect on the new delivery.
    match queue.ack(&first[0].receipt).await {
        Ok(()) | Err(PortError::StaleReceipt) => {}
        Err(other) => panic!("ack with a stale receipt: {other}"),
    }
    queue.ack(&again[0].receipt).await.expect("ack with the current receipt");
    assert!(queue.receive(1, short, Duration::from_secs(1)).await.expect("receive").is_empty(), "acked is gone");

    // A heartbeat keeps a message hidden past its first timeout.
    queue.send("two").await.expect("send");
    let held = queue.receive(1, short, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(held.len(), 1);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        queue.extend_visibility(&held[0].receipt, short).await.expect("extend");
    }
    assert!(queue.receive(1, short, Duration::ZERO).await.expect("receive").is_empty(), "heartbeat kept it hidden");
    queue.dead_letter(&held[0], "contract: rejected").await.expect("dead-letter");
    let depth = queue.depth().await.expect("depth");
    assert_eq!((depth.visible, depth.in_flight, depth.dead_lettered), (0, 0, 1), "moved to the dead-letter queue");

    // Redrive: after max_receive_count receives without an ack the message moves on by itself.
    queue.send("poison").await.expect("send");
    for attempt in 1..=max_receive_count {
        let got = queue.receive(1, short, Duration::from_secs(5)).await.expect("receive");
        assert_eq!(got.len(), 1, "attempt {attempt} delivers");
        assert_eq!(got[0].receive_count, attempt);
        tokio::time::sleep(past_short).await;
    }
    assert!(queue.receive(1, short, Duration::from_secs(1)).await.expect("receive").is_empty(), "redriven");
    assert_eq!(queue.depth().await.expect("depth").dead_lettered, 2);

    // Long polling returns as soon as a message arrives.
    let started = tokio::time::Instant::now();
    let (received, ()) = tokio::join!(queue.receive(1, short, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue.send("late").await.expect("send");
    });
    assert_eq!(received.expect("receive").len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5), "long poll woke on arrival");
}

fn job(user: &str, name: &str, created_ms: i64) -> JobRecord {
    let key = format!("uploads/{user}/{name}");
    let upload = UploadSource { bucket: "contract".into(), key, etag: "etag".into(), version_id: None };
    JobRecord::received(
        &upload,
        UserId::parse(user).expect("user"),
        BTreeMap::from([("fast".to_owned(), "true".to_owned())]),
        Timestamp::from_epoch_millis(created_ms),
    )
}

/// Create-if-absent, forward-only conditional transitions (a lost race is a no-op), listing by user.
pub async fn job_store_contract(store: Arc<dyn JobStore>) {
    let record = job("alice", "a.nii.gz", 1_700_000_000_000);
    assert!(store.create_if_absent(&record).await.expect("create"), "first create creates");
    assert!(!store.create_if_absent(&record).await.expect("create"), "second create is a no-op");
    assert_eq!(store.get(&record.job_id).await.expect("get"), Some(record.clone()));

    let at = Timestamp::from_epoch_millis(1_700_000_001_000);
    let applied =
        store.transition(&record.job_id, &Transition::to(JobStatus::Ingesting, at, 1)).await.expect("transition");
    let TransitionOutcome::Applied(ingesting) = applied else { panic!("forward transition must apply: {applied:?}") };
    assert_eq!(ingesting.status, JobStatus::Ingesting);
    assert_eq!(ingesting.stages[&Stage::Ingest].started_at, Some(at));

    let backwards =
        store.transition(&record.job_id, &Transition::to(JobStatus::Received, at, 1)).await.expect("transition");
    assert!(
        matches!(backwards, TransitionOutcome::Ignored(ref j) if j.status == JobStatus::Ingesting),
        "no going back"
    );
    let repeat =
        store.transition(&record.job_id, &Transition::to(JobStatus::Ingesting, at, 1)).await.expect("transition");
    assert!(matches!(repeat, TransitionOutcome::Ignored(_)), "a repeat is a no-op");

    // Concurrent racers for the same step: exactly one wins.
    let mut racers = tokio::task::JoinSet::new();
    for attempt in 0..8u32 {
        let store = Arc::clone(&store);
        let job_id = record.job_id.clone();
        racers.spawn(async move {
            store.transition(&job_id, &Transition::to(JobStatus::Ingested, Timestamp::now(), attempt + 1)).await
        });
    }
    let mut winners = 0;
    while let Some(result) = racers.join_next().await {
        if matches!(result.expect("join").expect("transition"), TransitionOutcome::Applied(_)) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent transition applies");

    let completed = Transition::to(JobStatus::Completed, Timestamp::now(), 1);
    assert!(matches!(store.transition(&record.job_id, &completed).await.expect("t"), TransitionOutcome::Applied(_)));
    let error = crate::job::JobError { stage: Some(Stage::Mesh), code: ErrorCode::InternalError, message: "y".into() };
    let late_failure = Transition::failed(error, Timestamp::now(), 1);
    assert!(
        matches!(store.transition(&record.job_id, &late_failure).await.expect("t"), TransitionOutcome::Ignored(_)),
        "COMPLETED is terminal"
    );
    assert!(
        matches!(store.reopen(&{
            let mut pretend_failed = store.get(&record.job_id).await.expect("get").expect("job");
            pretend_failed.status = JobStatus::Failed;
            pretend_failed.reopened(Timestamp::now()).expect("reopened")
        }).await.expect("reopen"), TransitionOutcome::Ignored(ref j) if j.status == JobStatus::Completed),
        "a COMPLETED job is never re-opened"
    );
    let unknown = JobId::derive("x", "y", "z");
    assert_eq!(store.transition(&unknown, &completed).await.expect("t"), TransitionOutcome::NotFound);
    assert_eq!(store.get(&unknown).await.expect("get"), None);

    let older = job("alice", "b.nii.gz", 1_600_000_000_000);
    let other_user = job("bob", "c.nii.gz", 1_800_000_000_000);
    store.create_if_absent(&older).await.expect("create");
    store.create_if_absent(&other_user).await.expect("create");
    let listed: Vec<JobId> = store
        .list_by_user(&UserId::parse("alice").expect("user"), 10)
        .await
        .expect("list")
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(listed, vec![record.job_id.clone(), older.job_id.clone()], "a user's jobs, newest first, no one else's");
    assert_eq!(store.list_by_user(&UserId::parse("alice").expect("user"), 1).await.expect("list").len(), 1);

    job_store_reopen_contract(store).await;
}

/// A FAILED job is re-opened once per run: concurrent re-opens of the same run, one wins; the
/// next run then moves forward from RECEIVED as a new job would, and can fail and be re-opened again.
async fn job_store_reopen_contract(store: Arc<dyn JobStore>) {
    let record = job("dave", "e.nii.gz", 1_700_000_000_000);
    store.create_if_absent(&record).await.expect("create");
    let fresh = record.reopened(Timestamp::now());
    assert!(fresh.is_none(), "only a FAILED record can be re-opened");
    let error = crate::job::JobError { stage: Some(Stage::Ingest), code: ErrorCode::StorageError, message: "z".into() };
    let failed_at = Timestamp::from_epoch_millis(1_700_000_002_000);
    let TransitionOutcome::Applied(failed) =
        store.transition(&record.job_id, &Transition::failed(error.clone(), failed_at, 4)).await.expect("fail")
    else {
        panic!("failing a received job applies")
    };
    let next = failed.reopened(Timestamp::from_epoch_millis(1_700_000_003_000)).expect("reopened");
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = Arc::clone(&store);
        let next = next.clone();
        racers.spawn(async move { store.reopen(&next).await });
    }
    let mut winners = 0;
    while let Some(result) = racers.join_next().await {
        match result.expect("join").expect("reopen") {
            TransitionOutcome::Applied(job) => {
                winners += 1;
                assert_eq!(job, next);
            }
            TransitionOutcome::Ignored(job) => assert_eq!(job.run, 2, "the loser sees the new run"),
            TransitionOutcome::NotFound => panic!("the job exists"),
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent re-open applies");
    let stored = store.get(&record.job_id).await.expect("get").expect("job");
    assert_eq!((stored.status, stored.run), (JobStatus::Received, 2));
    assert_eq!(stored.previous_runs[0].error, Some(error.clone()), "the failed run's error is kept");
    assert!(
        matches!(store.reopen(&next).await.expect("reopen"), TransitionOutcome::Ignored(_)),
        "a repeat of the re-open is a no-op"
    );
    let TransitionOutcome::Applied(ingesting) = store
        .transition(&record.job_id, &Transition::to(JobStatus::Ingesting, Timestamp::now(), 1))
        .await
        .expect("transition")
    else {
        panic!("the new run moves forward from RECEIVED")
    };
    assert_eq!(ingesting.run, 2);
    let TransitionOutcome::Applied(failed_again) =
        store.transition(&record.job_id, &Transition::failed(error, Timestamp::now(), 1)).await.expect("fail")
    else {
        panic!("the second run can fail")
    };
    assert!(
        matches!(store.reopen(&next).await.expect("reopen"), TransitionOutcome::Ignored(_)),
        "run 2's re-open is stale"
    );
    let third = failed_again.reopened(Timestamp::now()).expect("reopened");
    let reopened = store.reopen(&third).await.expect("reopen");
    assert!(matches!(reopened, TransitionOutcome::Applied(ref j) if j.run == 3 && j.previous_runs.len() == 2));
    let mut unknown = third.clone();
    unknown.job_id = JobId::derive("x", "y", "w");
    assert_eq!(store.reopen(&unknown).await.expect("reopen"), TransitionOutcome::NotFound);
}

/// Publishing routes the event to the rule's target queue, as the envelope JSON.
/// `target` must be the (empty) queue the bus's rule sends every pipeline event to.
pub async fn event_bus_contract(bus: &dyn EventBus, target: &dyn WorkQueue) {
    let mut record = job("carol", "d.nii.gz", 1_700_000_000_000);
    record.status = JobStatus::Segmented;
    let envelope = EventEnvelope::new(JobEventDetail::from_job(&record));
    bus.publish(std::slice::from_ref(&envelope)).await.expect("publish");
    let delivered = target.receive(10, Duration::from_secs(5), Duration::from_secs(5)).await.expect("receive");
    assert_eq!(delivered.len(), 1, "one event, one message");
    let body: EventEnvelope = serde_json::from_str(&delivered[0].body).expect("envelope JSON");
    assert_eq!(body.detail, envelope.detail);
    assert_eq!(body.detail.event_id, format!("{}:SEGMENTED", record.job_id));
    assert_eq!(body.source, "iris.pipeline");
    target.ack(&delivered[0].receipt).await.expect("ack");
}

/// Connections, subscriptions, in-order delivery bookkeeping, removal.
pub async fn connection_store_contract(store: &dyn ConnectionStore) {
    let alice = Connection {
        connection_id: "conn-a".into(),
        user_id: UserId::parse("alice").expect("user"),
        connected_at: Timestamp::from_epoch_millis(1),
    };
    let bob =
        Connection { connection_id: "conn-b".into(), user_id: UserId::parse("bob").expect("user"), ..alice.clone() };
    store.add_connection(&alice).await.expect("add");
    store.add_connection(&bob).await.expect("add");
    assert_eq!(store.get_connection("conn-a").await.expect("get"), Some(alice.clone()));
    let job_id = JobId::derive("b", "uploads/alice/x", "e");
    store.subscribe("conn-a", &job_id).await.expect("subscribe");
    store.subscribe("conn-a", &job_id).await.expect("subscribing twice is harmless");
    store.subscribe("conn-b", &job_id).await.expect("subscribe");
    store.subscribe("conn-unknown", &job_id).await.expect("subscribe of an unknown connection is ignored");
    let subscribers = store.subscribers(&job_id).await.expect("subscribers");
    assert_eq!(subscribers.len(), 2);
    let other_job = JobId::derive("b", "uploads/alice/y", "e");
    store.subscribe("conn-a", &other_job).await.expect("subscribe");
    assert_eq!(store.subscription_count("conn-a").await.expect("count"), 2, "conn-a follows two jobs");
    assert_eq!(store.subscription_count("conn-b").await.expect("count"), 1);
    assert_eq!(store.subscription_count("conn-unknown").await.expect("count"), 0);
    store.unsubscribe("conn-a", &other_job).await.expect("unsubscribe");
    assert_eq!(store.subscription_count("conn-a").await.expect("count"), 1);
    assert_eq!(subscribers[0].user_id.as_str(), "alice");
    assert_eq!(subscribers[0].delivered_position, 0);

    assert!(store.advance_delivery("conn-a", &job_id, 3).await.expect("advance"));
    assert!(!store.advance_delivery("conn-a", &job_id, 3).await.expect("advance"), "the same status is sent once");
    assert!(!store.advance_delivery("conn-a", &job_id, 2).await.expect("advance"), "an older status is not sent");
    assert!(store.advance_delivery("conn-a", &job_id, 4).await.expect("advance"));
    // A post of rank 5 that failed is released back to 4, so the retry sends it.
    assert!(store.advance_delivery("conn-a", &job_id, 5).await.expect("advance"));
    store.release_delivery("conn-a", &job_id, 5, 4).await.expect("release");
    assert!(store.advance_delivery("conn-a", &job_id, 5).await.expect("advance"), "released: sent again");
    // A release that comes after a later state was sent leaves that state alone.
    assert!(store.advance_delivery("conn-a", &job_id, 6).await.expect("advance"));
    store.release_delivery("conn-a", &job_id, 5, 4).await.expect("release");
    assert!(!store.advance_delivery("conn-a", &job_id, 6).await.expect("advance"), "a stale release changes nothing");
    store.release_delivery("conn-gone", &job_id, 5, 4).await.expect("releasing an unknown subscription is harmless");
    // Positions go past one byte: a job's second run starts at 17 and its states follow.
    assert!(store.advance_delivery("conn-a", &job_id, 17).await.expect("advance"), "run 2's RECEIVED");
    assert!(!store.advance_delivery("conn-a", &job_id, 8).await.expect("advance"), "run 1's FAILED, late");
    assert!(store.advance_delivery("conn-a", &job_id, 1_000_007).await.expect("advance"));
    let positions: Vec<u32> =
        store.subscribers(&job_id).await.expect("subscribers").iter().map(|s| s.delivered_position).collect();
    assert!(positions.contains(&1_000_007), "{positions:?}");

    store.unsubscribe("conn-b", &job_id).await.expect("unsubscribe");
    assert_eq!(store.subscribers(&job_id).await.expect("subscribers").len(), 1);
    store.remove_connection("conn-a").await.expect("remove");
    assert!(store.subscribers(&job_id).await.expect("subscribers").is_empty(), "removal drops subscriptions");
    assert_eq!(store.get_connection("conn-a").await.expect("get"), None);
}
