//! The notify service with its local WebSocket gateway, on the real embedded stores: tokens
//! checked at the upgrade (query or Authorization header), dropped clients removed, connections
//! that are gone removed when a state is posted to them. (Delivery through a running pipeline is
//! tested in `tests/system/websocket.rs`; the API Gateway side in `lambda/websocket/tests/`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::ids::UserId;
use iris_core::job::{JobRecord, UploadSource};
use iris_embedded::EmbeddedBackends;
use iris_notify::testing::{self, Socket, next_json, send};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The notify service (consumer and local gateway) on a temporary data directory.
struct Harness {
    _directory: tempfile::TempDir,
    config: IrisConfig,
    backends: Backends,
    address: SocketAddr,
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start() -> Harness {
        let directory = tempfile::tempdir().expect("temp dir");
        let data = directory.path().display().to_string();
        let config = IrisConfig::from_lookup(|name| (name == "IRIS_DATA_DIR").then(|| data.clone())).expect("config");
        let backends = EmbeddedBackends::open(&config).expect("open backends").ports();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let service = {
            let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
            tokio::spawn(async move { iris_notify::run_service(&backends, &config, listener, shutdown).await })
        };
        Harness { _directory: directory, config, backends, address, shutdown, service }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.service.await.expect("notify stops");
    }
}

/// A client of `user` connected to the harness's gateway.
async fn connect(harness: &Harness, address: SocketAddr, user: &str) -> Socket {
    testing::connect(&harness.config.data_dir, address, user).await
}

/// The local gateway accepts only a valid token, as API Gateway's authorizer does: none, a
/// malformed one, one signed by another key and an expired one are all answered 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_gateway_refuses_connections_without_a_valid_token() {
    let harness = Harness::start().await;
    let address = harness.address;
    let alice = UserId::parse("alice").unwrap();
    let foreign = iris_notify::auth::TokenSigner::generate().unwrap();
    let own = iris_notify::auth::TokenSigner::load_or_create(&harness.config.data_dir).unwrap();
    let long_ago = iris_core::time::Timestamp::from_epoch_millis(1_000_000_000);
    let refused = [
        ("no token", format!("ws://{address}/")),
        ("the old ?user= form", format!("ws://{address}/?user=alice")),
        ("a malformed token", format!("ws://{address}/?token=abc.def.ghi")),
        (
            "another key's token",
            format!(
                "ws://{address}/?token={}",
                foreign.issue(&alice, Duration::from_secs(600), iris_core::time::Timestamp::now()).unwrap()
            ),
        ),
        (
            "an expired token",
            format!("ws://{address}/?token={}", own.issue(&alice, Duration::from_secs(60), long_ago).unwrap()),
        ),
    ];
    for (what, url) in refused {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "{what}")
            }
            other => panic!("{what}: expected 401, got {:?}", other.map(|(_, response)| response.status())),
        }
    }
    // The same token in an Authorization header is accepted.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{address}/"))
            .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", testing::token_for(&harness.config.data_dir, "alice")).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("bearer token accepted");
    send(&mut socket, serde_json::json!({"action": "list"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "jobs");
    harness.stop().await;
}

/// A client that vanishes without a close frame is removed from the connection store, and
/// states posted to it afterwards go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_is_removed() {
    let harness = Harness::start().await;
    let mut alice = connect(&harness, harness.address, "alice").await;
    let upload = UploadSource { bucket: "b".into(), key: "uploads/alice/x".into(), etag: "e".into(), version_id: None };
    let job = JobRecord::received(
        &upload,
        UserId::parse("alice").unwrap(),
        BTreeMap::new(),
        iris_core::time::Timestamp::now(),
    );
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job.job_id})).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    assert_eq!(harness.backends.connections.subscribers(&job.job_id).await.unwrap().len(), 1);
    // Drop the TCP connection under the WebSocket: no close handshake.
    drop(alice);
    let started = Instant::now();
    while !harness.backends.connections.subscribers(&job.job_id).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the dropped connection is still recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let local = iris_notify::LocalNotify::new(&harness.backends);
    assert_eq!(local.core.deliver(&iris_core::events::JobEventDetail::from_job(&job)).await.unwrap(), 0);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_gone_is_removed_when_a_state_is_posted_to_it() {
    let harness = Harness::start().await;
    let local = iris_notify::LocalNotify::new(&harness.backends);
    let user = UserId::parse("alice").unwrap();
    // A connection recorded in the store that the gateway no longer holds (e.g. before a restart).
    let stale = iris_core::ports::Connection {
        connection_id: "stale".into(),
        user_id: user.clone(),
        connected_at: iris_core::time::Timestamp::now(),
    };
    harness.backends.connections.add_connection(&stale).await.unwrap();
    let upload = UploadSource { bucket: "b".into(), key: "uploads/alice/x".into(), etag: "e".into(), version_id: None };
    let job = JobRecord::received(&upload, user, BTreeMap::new(), iris_core::time::Timestamp::now());
    harness.backends.connections.subscribe("stale", &job.job_id).await.unwrap();
    let sent = local.core.deliver(&iris_core::events::JobEventDetail::from_job(&job)).await.unwrap();
    assert_eq!(sent, 0);
    assert_eq!(harness.backends.connections.get_connection("stale").await.unwrap(), None, "removed after Gone");
}

/// Issue #24: one connection may follow at most `MAX_SUBSCRIPTIONS_PER_CONNECTION` jobs (2,000
/// were accepted before); past it a subscribe is refused with `too_many_subscriptions`, while
/// subscribing again to a job it already follows still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_follows_a_bounded_number_of_jobs() {
    use iris_notify::core::MAX_SUBSCRIPTIONS_PER_CONNECTION;
    let harness = Harness::start().await;
    let mut alice = connect(&harness, harness.address, "alice").await;
    let job_ids: Vec<String> = (0..=MAX_SUBSCRIPTIONS_PER_CONNECTION)
        .map(|n| iris_core::ids::JobId::derive("b", &format!("uploads/alice/{n}"), "e").as_str().to_owned())
        .collect();
    for job_id in &job_ids[..MAX_SUBSCRIPTIONS_PER_CONNECTION] {
        send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_id})).await;
        assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    }
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_ids[MAX_SUBSCRIPTIONS_PER_CONNECTION]}))
        .await;
    let refused = next_json(&mut alice).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("too_many_subscriptions")));
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_ids[0]})).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed", "a job it already follows");
    send(&mut alice, serde_json::json!({"action": "unsubscribe", "jobId": job_ids[1]})).await;
    assert_eq!(next_json(&mut alice).await["type"], "unsubscribed");
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_ids[MAX_SUBSCRIPTIONS_PER_CONNECTION]}))
        .await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed", "room again after an unsubscribe");
    harness.stop().await;
}

/// Issue #24: a client that stops reading is not buffered without end: once its send queue
/// (`SEND_QUEUE_FRAMES`) is full, posting to it answers Gone and the client, when it reads
/// again, gets the queued frames and then a close frame with `SLOW_CONSUMER_CLOSE_CODE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_not_buffered() {
    use futures_util::StreamExt;
    use iris_core::ports::{ConnectionGateway, PortError};
    use iris_notify::gateway::{SEND_QUEUE_FRAMES, SLOW_CONSUMER_CLOSE_CODE};
    use tokio_tungstenite::tungstenite::Message;
    let directory = tempfile::tempdir().expect("temp dir");
    let data = directory.path().display().to_string();
    let config = IrisConfig::from_lookup(|name| (name == "IRIS_DATA_DIR").then(|| data.clone())).expect("config");
    let backends = EmbeddedBackends::open(&config).expect("open backends").ports();
    let local = iris_notify::LocalNotify::new(&backends);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let address = listener.local_addr().expect("address");
    let verifier = iris_notify::auth::TokenSigner::load_or_create(&config.data_dir).expect("key").verifier();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(iris_notify::gateway::serve(
        listener,
        local.gateway.clone(),
        local.core.clone(),
        verifier,
        shutdown.clone(),
    ));
    let mut alice = testing::connect(&config.data_dir, address, "alice").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while local.gateway.open_connections() == 0 {
        assert!(Instant::now() < deadline, "the connection registers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Frames of 64 KiB: the socket's buffers fill after a few dozen, then the queue.
    let frame = format!("{{\"type\":\"padding\",\"data\":\"{}\"}}", "x".repeat(64 * 1024));
    let id = local.gateway.connection_ids().pop().expect("the open connection's id");
    let mut posted = 0usize;
    let gone = loop {
        match local.gateway.post_to_connection(&id, &frame).await {
            Ok(()) => posted += 1,
            Err(error) => break error,
        }
        assert!(posted < 4_000, "the queue never filled ({posted} frames of 64 KiB posted)");
        if posted.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    };
    assert!(matches!(gone, PortError::Gone(_)), "{gone:?}");
    assert!(posted >= SEND_QUEUE_FRAMES, "{posted} frames were accepted before the queue was full");
    // Reading again: the frames that were queued, then the close frame.
    let mut received = 0usize;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(60), alice.next()).await.expect("a frame within 60 s") {
            Some(Ok(Message::Text(_))) => received += 1,
            Some(Ok(Message::Close(close))) => break close,
            other => panic!("unexpected {other:?} after {received} frames"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), SLOW_CONSUMER_CLOSE_CODE);
    assert!(received >= SEND_QUEUE_FRAMES && received <= posted, "{received} of {posted} frames delivered");
    assert!(local.gateway.post_to_connection(&id, "{}").await.is_err(), "the connection is gone");
    shutdown.cancel();
    server.await.expect("gateway stops");
}
