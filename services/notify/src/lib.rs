//! The notify service: consumes pipeline events from the notify queue and pushes each job state to
//! the job's WebSocket subscribers; in embedded mode it also runs the local WebSocket gateway.

pub mod auth;
pub mod core;
pub mod gateway;
pub mod lambda;
pub mod protocol;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::events::EventEnvelope;
use iris_core::ids::JobId;
use iris_core::job::Stage;
use iris_core::keys::QueueRole;
use iris_core::ports::{ConnectionGateway, ReceivedMessage};
use iris_core::runtime::{MessageHandler, Outcome, WorkerSettings, run_worker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, instrument};

pub use crate::core::NotifyCore;
pub use gateway::LocalGateway;

pub struct NotifyHandler {
    core: Arc<NotifyCore>,
}

impl NotifyHandler {
    pub fn new(core: Arc<NotifyCore>) -> NotifyHandler {
        NotifyHandler { core }
    }
}

#[async_trait]
impl MessageHandler for NotifyHandler {
    fn name(&self) -> &'static str {
        "notify"
    }

    #[instrument(skip_all, fields(job_id))]
    async fn process_one(&self, message: &ReceivedMessage) -> Outcome {
        let envelope: EventEnvelope = match serde_json::from_str(&message.body) {
            Ok(envelope) => envelope,
            Err(error) => return Outcome::Reject { reason: format!("not a pipeline event: {error}") },
        };
        Span::current().record("job_id", envelope.detail.job_id.as_str());
        match self.core.deliver(&envelope.detail).await {
            Ok(sent) => {
                debug!(status = %envelope.detail.status, sent, "delivered");
                Outcome::Done
            }
            Err(error) if error.is_retryable() => Outcome::Retry { reason: error.to_string() },
            Err(error) => Outcome::Reject { reason: error.to_string() },
        }
    }

    /// Notifications never fail a job: a lost notification is not a failed study.
    fn job_of(&self, _message: &ReceivedMessage) -> Option<(JobId, Option<Stage>)> {
        None
    }
}

/// The local gateway and its notification core, ready to serve.
pub struct LocalNotify {
    pub gateway: Arc<LocalGateway>,
    pub core: Arc<NotifyCore>,
}

impl LocalNotify {
    pub fn new(backends: &Backends) -> LocalNotify {
        let gateway = Arc::new(LocalGateway::default());
        let core = Arc::new(NotifyCore::new(
            Arc::clone(&backends.jobs),
            Arc::clone(&backends.connections),
            gateway.clone() as Arc<dyn ConnectionGateway>,
        ));
        LocalNotify { gateway, core }
    }
}

/// Embedded mode: runs the notify consumer and the local WebSocket gateway on `listener` until
/// `shutdown`. Tokens are checked with the key pair in the data directory (created on first use;
/// `iris token issue` signs with the same one). If that key cannot be read or created, the
/// gateway cannot authenticate anyone: the error is logged and notify does not start.
pub async fn run_service(backends: &Backends, config: &IrisConfig, listener: TcpListener, shutdown: CancellationToken) {
    let verifier = match auth::TokenSigner::load_or_create(&config.data_dir) {
        Ok(signer) => signer.verifier(),
        Err(error) => {
            tracing::error!(%error, "notify cannot start: no token key");
            return;
        }
    };
    let local = LocalNotify::new(backends);
    let gateway = tokio::spawn(gateway::serve(
        listener,
        Arc::clone(&local.gateway),
        Arc::clone(&local.core),
        verifier,
        shutdown.clone(),
    ));
    run_consumer(backends, config, local.core, shutdown).await;
    let _ = gateway.await;
}

/// The notify queue consumer alone, posting through `core`'s gateway (in AWS: the API Gateway
/// Management API). Notify works on one message at a time so that states reach subscribers in
/// publication order.
pub async fn run_consumer(
    backends: &Backends,
    config: &IrisConfig,
    core: Arc<NotifyCore>,
    shutdown: CancellationToken,
) {
    let settings = WorkerSettings { concurrency: 1, ..config.worker_settings() };
    let handler = Arc::new(NotifyHandler::new(core));
    run_worker(handler, backends.queue(QueueRole::Notify), backends.ledger(), settings, shutdown).await;
}
