//! The port contract suites (iris_core::contract) against the embedded adapters.

use std::sync::Arc;

use iris_core::config::IrisConfig;
use iris_core::contract;
use iris_core::keys::QueueRole;
use iris_embedded::EmbeddedBackends;

fn open(max_attempts: u32) -> (tempfile::TempDir, EmbeddedBackends) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().to_owned();
    let config = IrisConfig::from_lookup(|name| match name {
        "IRIS_DATA_DIR" => Some(path.display().to_string()),
        "IRIS_MAX_ATTEMPTS" => Some(max_attempts.to_string()),
        _ => None,
    })
    .expect("config");
    let backends = EmbeddedBackends::open(&config).expect("open embedded backends");
    (directory, backends)
}

#[tokio::test]
async fn directory_object_store_keeps_the_object_store_contract() {
    let (_dir, backends) = open(4);
    contract::object_store_contract(backends.objects.as_ref()).await;
}

#[tokio::test]
async fn sqlite_work_queue_keeps_the_work_queue_contract() {
    // The embedded queue's redrive is max_attempts + 1 receives.
    let (_dir, backends) = open(2);
    contract::work_queue_contract(backends.queues[&QueueRole::Ingest].as_ref(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_store_keeps_the_job_store_contract() {
    let (_dir, backends) = open(4);
    contract::job_store_contract(backends.jobs.clone() as Arc<dyn iris_core::ports::JobStore>).await;
}

#[tokio::test]
async fn sqlite_event_bus_keeps_the_event_bus_contract() {
    let (_dir, backends) = open(4);
    contract::event_bus_contract(backends.events.as_ref(), backends.queues[&QueueRole::Notify].as_ref()).await;
}

#[tokio::test]
async fn sqlite_connection_store_keeps_the_connection_store_contract() {
    let (_dir, backends) = open(4);
    contract::connection_store_contract(backends.connections.as_ref()).await;
}

#[tokio::test]
async fn sqlite_work_queue_refuses_a_stale_receipt() {
    use iris_core::ports::{PortError, WorkQueue};
    let (_dir, backends) = open(4);
    let queue = backends.queues[&QueueRole::Mesh].as_ref();
    queue.send("m").await.unwrap();
    let visibility = std::time::Duration::from_millis(200);
    let first = queue.receive(1, visibility, std::time::Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = queue.receive(1, visibility * 50, std::time::Duration::from_secs(1)).await.unwrap();
    assert!(matches!(queue.ack(&first[0].receipt).await, Err(PortError::StaleReceipt)));
    assert!(matches!(queue.extend_visibility(&first[0].receipt, visibility).await, Err(PortError::StaleReceipt)));
    assert_eq!(queue.depth().await.unwrap().in_flight, 1, "the stale ack did not delete the redelivered message");
    queue.ack(&second[0].receipt).await.unwrap();
}

#[tokio::test]
async fn objects_and_queued_messages_survive_reopening_the_data_directory() {
    let (directory, backends) = open(4);
    let key = iris_core::keys::ObjectKey::parse("uploads/u/durable.nii").unwrap();
    iris_core::ports::ObjectStore::put(backends.objects.as_ref(), &key, b"bytes".to_vec(), &Default::default())
        .await
        .unwrap();
    drop(backends);
    let config =
        IrisConfig::from_lookup(|name| (name == "IRIS_DATA_DIR").then(|| directory.path().display().to_string()))
            .unwrap();
    let reopened = EmbeddedBackends::open(&config).unwrap();
    let queue = &reopened.queues[&QueueRole::Ingest];
    let messages = iris_core::ports::WorkQueue::receive(
        queue.as_ref(),
        1,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(messages.len(), 1, "the object-created notification is durable");
    assert!(messages[0].body.contains("uploads/u/durable.nii"));
    assert_eq!(iris_core::ports::ObjectStore::get(reopened.objects.as_ref(), &key).await.unwrap(), b"bytes");
}
