//! The notify service's AWS side without AWS: the API Gateway Management API adapter against a
//! stand-in HTTP server, fan-out and redelivery through the notify core, and the WebSocket Lambda's
//! routes and authorizer driven by API Gateway event fixtures (`tests/fixtures/`).
//!
//! The stand-in: API Gateway cannot run here, and moto's Management API never answers 410 Gone or
//! 429, so a small HTTP server plays the Management API (`POST /@connections/{id}`), answering as
//! the real one does (`x-amzn-ErrorType: GoneException` with 410, `LimitExceededException` with
//! 429) by connection id, and recording what was posted. Everything else is real: the SDK client,
//! its retry strategy, and the SQLite job and connection stores of embedded mode. The moto test
//! of the whole path (EventBridge rule → SQS → notify → Management API) is in `tests/system/on_moto.rs`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use iris_aws::ApiGatewayConnectionGateway;
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::events::JobEventDetail;
use iris_core::ids::UserId;
use iris_core::job::{JobRecord, JobStatus, UploadSource};
use iris_core::ports::{Connection, ConnectionGateway, PortError};
use iris_core::time::Timestamp;
use iris_embedded::EmbeddedBackends;
use iris_notify::NotifyCore;
use iris_notify::auth::TokenSigner;
use iris_notify::lambda::WebSocketRoutes;
use serde_json::{Value, json};

// ---- the stand-in Management API --------------------------------------------------------------

/// How the stand-in answers, by connection id prefix: `gone…` → 410 GoneException; `busy…` → 429
/// LimitExceededException for the first `throttle_first` posts to that id; `jammed…` → 429 until
/// `unjam`; anything else → 200.
struct StandIn {
    url: String,
    state: Arc<StandInState>,
}

#[derive(Default)]
struct StandInState {
    /// (connection id, body) of every accepted post, in arrival order.
    posts: Mutex<Vec<(String, String)>>,
    attempts: Mutex<HashMap<String, u32>>,
    throttle_first: u32,
    jammed: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl StandIn {
    async fn start(throttle_first: u32) -> StandIn {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(StandInState { throttle_first, jammed: AtomicBool::new(true), ..Default::default() });
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn { url, state }
    }

    fn posts(&self) -> Vec<(String, String)> {
        self.state.posts.lock().unwrap().clone()
    }

    fn posts_to(&self, connection_id: &str) -> Vec<Value> {
        self.posts()
            .into_iter()
            .filter(|(id, _)| id == connection_id)
            .map(|(_, body)| serde_json::from_str(&body).expect("posted JSON"))
            .collect()
    }

    fn attempts(&self, connection_id: &str) -> u32 {
        self.state.attempts.lock().unwrap().get(connection_id).copied().unwrap_or(0)
    }

    async fn gateway(&self) -> ApiGatewayConnectionGateway {
        let clients = iris_aws::local::clients_for_endpoint(&self.url).await;
        ApiGatewayConnectionGateway::new(&clients.sdk_config, &self.url)
    }
}

async fn answer(state: Arc<StandInState>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    // Long enough that concurrent posts overlap.
    tokio::time::sleep(Duration::from_millis(15)).await;
    let connection_id =
        percent_encoding::percent_decode_str(path.rsplit('/').next().unwrap_or("")).decode_utf8_lossy().into_owned();
    let attempt = {
        let mut attempts = state.attempts.lock().unwrap();
        let count = attempts.entry(connection_id.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let error = |status: u16, kind: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-amzn-ErrorType", kind)
            .body(Full::new(Bytes::from_static(br#"{"message":null}"#)))
            .unwrap()
    };
    let response = if method != hyper::Method::POST || !path.contains("/@connections/") {
        error(404, "NotFoundException")
    } else if connection_id.starts_with("gone") {
        error(410, "GoneException")
    } else if (connection_id.starts_with("busy") && attempt <= state.throttle_first)
        || (connection_id.starts_with("jammed") && state.jammed.load(Ordering::SeqCst))
    {
        error(429, "LimitExceededException")
    } else {
        state.posts.lock().unwrap().push((connection_id, String::from_utf8_lossy(&body).into_owned()));
        Response::builder().status(200).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

// ---- helpers ----------------------------------------------------------------------------------

/// Real embedded (SQLite) stores in a temporary directory.
fn embedded_stores() -> (tempfile::TempDir, Backends) {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().to_owned();
    let config = IrisConfig::from_lookup(|name| (name == "IRIS_DATA_DIR").then(|| data.display().to_string())).unwrap();
    let backends = EmbeddedBackends::open(&config).unwrap().ports();
    (directory, backends)
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn job_of(owner: &str, status: JobStatus) -> JobRecord {
    let upload = UploadSource {
        bucket: "b".into(),
        key: format!("uploads/{owner}/scan.nii.gz"),
        etag: "e".into(),
        version_id: None,
    };
    let mut job = JobRecord::received(&upload, user(owner), BTreeMap::new(), Timestamp::now());
    job.status = status;
    job
}

async fn add_subscriber(backends: &Backends, connection_id: &str, owner: &str, job: &JobRecord) {
    let connection =
        Connection { connection_id: connection_id.into(), user_id: user(owner), connected_at: Timestamp::now() };
    backends.connections.add_connection(&connection).await.unwrap();
    backends.connections.subscribe(connection_id, &job.job_id).await.unwrap();
}

fn fixture(name: &str, replacements: &[(&str, &str)]) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    serde_json::from_str(&text).unwrap()
}

// ---- the Management API adapter ---------------------------------------------------------------

#[tokio::test]
async fn the_management_api_gateway_posts_reports_gone_and_retries_throttling() {
    let stand_in = StandIn::start(2).await;
    let gateway = stand_in.gateway().await;
    // A real API Gateway connection id contains `=`: it must survive the URL path.
    gateway.post_to_connection("ok-Dl8TbeGCoAMCL-g=", r#"{"type":"x"}"#).await.unwrap();
    assert_eq!(stand_in.posts(), [("ok-Dl8TbeGCoAMCL-g=".to_owned(), r#"{"type":"x"}"#.to_owned())]);

    let gone = gateway.post_to_connection("gone-1", "{}").await;
    assert!(matches!(gone, Err(PortError::Gone(ref id)) if id == "gone-1"), "{gone:?}");
    assert_eq!(stand_in.attempts("gone-1"), 1, "Gone is final: not retried");

    gateway.post_to_connection("busy-1", "{}").await.expect("throttled twice, then accepted");
    assert_eq!(stand_in.attempts("busy-1"), 3);

    let jammed = gateway.post_to_connection("jammed-1", "{}").await;
    assert!(matches!(&jammed, Err(error) if error.is_retryable()), "{jammed:?}");
    assert_eq!(stand_in.attempts("jammed-1"), iris_aws::apigateway::POST_ATTEMPTS);
}

// ---- fan-out and redelivery through the notify core ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_fans_out_concurrently_removes_gone_connections_and_resends_only_what_failed() {
    let stand_in = StandIn::start(0).await;
    let (_directory, backends) = embedded_stores();
    let core = NotifyCore::new(backends.jobs.clone(), backends.connections.clone(), Arc::new(stand_in.gateway().await));
    let job = job_of("alice", JobStatus::Segmenting);
    let healthy: Vec<String> = (0..60).map(|n| format!("ok-{n}")).collect();
    for id in &healthy {
        add_subscriber(&backends, id, "alice", &job).await;
    }
    add_subscriber(&backends, "gone-1", "alice", &job).await;
    add_subscriber(&backends, "jammed-1", "alice", &job).await;
    // A subscription of another user (it cannot be made through the protocol; the core checks anyway).
    add_subscriber(&backends, "ok-bob", "bob", &job).await;

    let event = JobEventDetail::from_job(&job);
    let first = core.deliver(&event).await;
    assert!(
        matches!(&first, Err(error) if error.is_retryable()),
        "a throttled subscriber makes the event retry: {first:?}"
    );
    for id in &healthy {
        let posted = stand_in.posts_to(id);
        assert_eq!(posted.len(), 1, "{id}");
        assert_eq!(posted[0]["type"], "jobState");
        assert_eq!(posted[0]["event"]["status"], "SEGMENTING");
    }
    assert!(stand_in.posts_to("ok-bob").is_empty(), "never sent to another user's connection");
    assert_eq!(backends.connections.get_connection("gone-1").await.unwrap(), None, "Gone: removed");
    let concurrency = stand_in.state.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=iris_notify::core::FAN_OUT_CONCURRENCY).contains(&concurrency),
        "posts overlap, within the bound: {concurrency}"
    );

    // The redelivery reaches the throttled subscriber once its buffer drains, and nobody else again.
    stand_in.state.jammed.store(false, Ordering::SeqCst);
    assert_eq!(core.deliver(&event).await.unwrap(), 1);
    assert_eq!(stand_in.posts_to("jammed-1").len(), 1);
    assert!(healthy.iter().all(|id| stand_in.posts_to(id).len() == 1), "no duplicates");
    // An older state arriving late is not sent; a newer one is.
    let mut older = job.clone();
    older.status = JobStatus::Ingested;
    assert_eq!(core.deliver(&JobEventDetail::from_job(&older)).await.unwrap(), 0);
    let mut newer = job.clone();
    newer.status = JobStatus::Completed;
    assert_eq!(core.deliver(&JobEventDetail::from_job(&newer)).await.unwrap(), healthy.len() + 1);
}

// ---- the WebSocket Lambda: authorizer and routes -------------------------------------------------

struct LambdaUnderTest {
    stand_in: StandIn,
    _directory: tempfile::TempDir,
    backends: Backends,
    routes: WebSocketRoutes,
    signer: TokenSigner,
}

impl LambdaUnderTest {
    async fn new() -> LambdaUnderTest {
        let stand_in = StandIn::start(0).await;
        let (directory, backends) = embedded_stores();
        let core = Arc::new(NotifyCore::new(
            backends.jobs.clone(),
            backends.connections.clone(),
            Arc::new(stand_in.gateway().await),
        ));
        let signer = TokenSigner::generate().unwrap();
        let verifier = iris_notify::auth::TokenVerifier::from_public_key(&signer.verifier().public_key_text()).unwrap();
        let routes = WebSocketRoutes { core, verifier: Some(verifier) };
        LambdaUnderTest { stand_in, _directory: directory, backends, routes, signer }
    }

    fn token(&self, name: &str) -> String {
        self.signer.issue(&user(name), Duration::from_secs(600), Timestamp::now()).unwrap()
    }

    async fn connect(&self, connection_id: &str, name: &str) -> Value {
        let event = fixture("connect.json", &[("CONNECTION", connection_id), ("USER", name)]);
        self.routes.handle(event).await.unwrap()
    }

    async fn send(&self, connection_id: &str, route: &str, body: &Value) -> Value {
        let body = body.to_string();
        let mut event = fixture("message.json", &[("CONNECTION", connection_id), ("ROUTE", route)]);
        event["body"] = Value::String(body);
        self.routes.handle(event).await.unwrap()
    }
}

#[tokio::test]
async fn the_authorizer_allows_a_valid_token_and_names_its_user() {
    let lambda = LambdaUnderTest::new().await;
    let allowed =
        lambda.routes.handle(fixture("authorizer_request.json", &[("TOKEN", &lambda.token("alice"))])).await.unwrap();
    assert_eq!(allowed["principalId"], "alice");
    assert_eq!(allowed["context"]["userId"], "alice");
    let statement = &allowed["policyDocument"]["Statement"][0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(statement["Action"], "execute-api:Invoke");
    assert_eq!(statement["Resource"], "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/live/$connect");

    let foreign =
        TokenSigner::generate().unwrap().issue(&user("alice"), Duration::from_secs(600), Timestamp::now()).unwrap();
    for (what, token) in [("garbage", "not-a-token"), ("another key", foreign.as_str()), ("empty", "")] {
        let denied = lambda.routes.handle(fixture("authorizer_request.json", &[("TOKEN", token)])).await.unwrap();
        assert_eq!(denied["policyDocument"]["Statement"][0]["Effect"], "Deny", "{what}");
        assert!(denied.get("context").is_none(), "{what}: no user for a refused token");
    }
    // The token in an Authorization header instead of the query string.
    let mut event = fixture("authorizer_request.json", &[("TOKEN", "")]);
    event["headers"]["Authorization"] = json!(format!("Bearer {}", lambda.token("bob")));
    assert_eq!(lambda.routes.handle(event).await.unwrap()["principalId"], "bob");

    // Without a public key nobody gets in.
    let locked = WebSocketRoutes { core: Arc::clone(&lambda.routes.core), verifier: None };
    let denied = locked.handle(fixture("authorizer_request.json", &[("TOKEN", &lambda.token("alice"))])).await.unwrap();
    assert_eq!(denied["policyDocument"]["Statement"][0]["Effect"], "Deny");
}

#[tokio::test]
async fn the_lambda_routes_speak_the_protocol_and_keep_users_apart() {
    let lambda = LambdaUnderTest::new().await;
    let alice_job = job_of("alice", JobStatus::Received);
    lambda.backends.jobs.create_if_absent(&alice_job).await.unwrap();

    // $connect records the authorizer's user; without one the connection is refused.
    assert_eq!(lambda.connect("c-alice=", "alice").await["statusCode"], 200);
    assert_eq!(lambda.connect("c-bob=", "bob").await["statusCode"], 200);
    let stored = lambda.backends.connections.get_connection("c-alice=").await.unwrap().expect("recorded");
    assert_eq!(stored.user_id.as_str(), "alice");
    let mut anonymous = fixture("connect.json", &[("CONNECTION", "c-anon="), ("USER", "x")]);
    anonymous["requestContext"].as_object_mut().unwrap().remove("authorizer");
    assert_eq!(lambda.routes.handle(anonymous).await.unwrap()["statusCode"], 401);
    assert_eq!(lambda.backends.connections.get_connection("c-anon=").await.unwrap(), None);

    // subscribe: acknowledged, then the current state at once.
    let subscribe = json!({"action": "subscribe", "jobId": alice_job.job_id});
    assert_eq!(lambda.send("c-alice=", "subscribe", &subscribe).await["statusCode"], 200);
    let posted = lambda.stand_in.posts_to("c-alice=");
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(posted[0], json!({"type": "subscribed", "jobId": alice_job.job_id}));
    assert_eq!(posted[1]["type"], "jobState");
    assert_eq!(posted[1]["event"]["status"], "RECEIVED");
    assert_eq!(posted[1]["event"]["eventId"], format!("{}:RECEIVED", alice_job.job_id));

    // Another user's job: an error, never data, and no subscription.
    lambda.send("c-bob=", "subscribe", &subscribe).await;
    assert_eq!(
        lambda.stand_in.posts_to("c-bob="),
        [json!({"type": "error", "code": "forbidden", "message": "you may subscribe only to your own jobs"})]
    );
    let subscribers = lambda.backends.connections.subscribers(&alice_job.job_id).await.unwrap();
    assert_eq!(subscribers.iter().map(|s| s.connection_id.as_str()).collect::<Vec<_>>(), ["c-alice="]);

    // list: the caller's own jobs only.
    lambda.send("c-bob=", "list", &json!({"action": "list"})).await;
    assert_eq!(lambda.stand_in.posts_to("c-bob=")[1], json!({"type": "jobs", "jobs": []}));
    lambda.send("c-alice=", "list", &json!({"action": "list"})).await;
    let listed = lambda.stand_in.posts_to("c-alice=").pop().unwrap();
    assert_eq!(listed["jobs"][0]["jobId"], alice_job.job_id.as_str());

    // Malformed frames (through $default) get bad_request; the connection stays.
    lambda.send("c-alice=", "$default", &json!({"action": "drop-tables"})).await;
    assert_eq!(lambda.stand_in.posts_to("c-alice=").pop().unwrap()["code"], "bad_request");
    let mut raw = fixture("message.json", &[("CONNECTION", "c-alice="), ("ROUTE", "$default")]);
    raw["body"] = json!("not json");
    lambda.routes.handle(raw).await.unwrap();
    assert_eq!(lambda.stand_in.posts_to("c-alice=").pop().unwrap()["code"], "bad_request");

    // unsubscribe, then $disconnect removes the connection and what is left of its subscriptions.
    lambda.send("c-alice=", "unsubscribe", &json!({"action": "unsubscribe", "jobId": alice_job.job_id})).await;
    assert_eq!(lambda.stand_in.posts_to("c-alice=").pop().unwrap()["type"], "unsubscribed");
    assert!(lambda.backends.connections.subscribers(&alice_job.job_id).await.unwrap().is_empty());
    lambda.send("c-alice=", "subscribe", &subscribe).await;
    let disconnected = lambda.routes.handle(fixture("disconnect.json", &[("CONNECTION", "c-alice=")])).await.unwrap();
    assert_eq!(disconnected["statusCode"], 200);
    assert_eq!(lambda.backends.connections.get_connection("c-alice=").await.unwrap(), None);
    assert!(lambda.backends.connections.subscribers(&alice_job.job_id).await.unwrap().is_empty());

    // A frame from a connection the table no longer has (its TTL expired): told to reconnect.
    lambda.send("c-expired=", "list", &json!({"action": "list"})).await;
    assert_eq!(lambda.stand_in.posts_to("c-expired=")[0]["code"], "unknown_connection");

    // What is neither a route nor an authorizer call fails the invocation.
    assert!(lambda.routes.handle(json!({"Records": []})).await.is_err());
}
