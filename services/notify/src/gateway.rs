//! The local WebSocket gateway: plays API Gateway's part in embedded mode. It accepts
//! connections (`ws://HOST:PORT/?token=<token>`), records them in the connection store, hands
//! client frames to [`NotifyCore`], and implements `post_to_connection` (answering Gone for a
//! connection it no longer has).
//!
//! Identity: the same model as API Gateway's `$connect` authorizer. The upgrade request carries an
//! iris token (`token` query parameter or `Authorization: Bearer`), checked with the public key
//! ([`crate::auth`]); the token's subject is the connection's user. Without a valid token the
//! upgrade is answered 401 and no connection exists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use iris_core::ids::UserId;
use iris_core::ports::{Connection, ConnectionGateway, PortError};
use iris_core::time::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{TokenVerifier, token_from_request};
use crate::core::NotifyCore;
use crate::protocol::{ServerMessage, parse_client_message};

/// Frames waiting to be written to one connection. A client that reads slower than its jobs'
/// states arrive fills it; it is then disconnected ([`SLOW_CONSUMER_CLOSE_CODE`]) rather than
/// buffered without end. Its subscriptions go with it; on reconnecting and subscribing again it
/// gets each job's current state.
pub const SEND_QUEUE_FRAMES: usize = 256;
/// WebSocket close code for a client disconnected for not reading (1008, policy violation).
pub const SLOW_CONSUMER_CLOSE_CODE: u16 = 1008;

/// One open connection's outgoing frames, and whether it overflowed.
struct Outgoing {
    sender: mpsc::Sender<String>,
    overflowed: Arc<AtomicBool>,
}

/// Open connections of this process: connection id → outgoing frames.
#[derive(Default)]
pub struct LocalGateway {
    senders: Mutex<HashMap<String, Outgoing>>,
}

#[async_trait]
impl ConnectionGateway for LocalGateway {
    async fn post_to_connection(&self, connection_id: &str, payload: &str) -> Result<(), PortError> {
        let mut senders = self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(outgoing) = senders.get(connection_id) else { return Err(PortError::Gone(connection_id.to_owned())) };
        match outgoing.sender.try_send(payload.to_owned()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the connection's queue: it writes what is queued, then
                // closes with SLOW_CONSUMER_CLOSE_CODE.
                outgoing.overflowed.store(true, Ordering::SeqCst);
                senders.remove(connection_id);
                warn!(connection_id, frames = SEND_QUEUE_FRAMES, "slow consumer: send queue full, disconnecting");
                Err(PortError::Gone(connection_id.to_owned()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PortError::Gone(connection_id.to_owned())),
        }
    }
}

impl LocalGateway {
    fn register(&self, connection_id: &str) -> (mpsc::Receiver<String>, Arc<AtomicBool>) {
        let (sender, receiver) = mpsc::channel(SEND_QUEUE_FRAMES);
        let overflowed = Arc::new(AtomicBool::new(false));
        let outgoing = Outgoing { sender, overflowed: Arc::clone(&overflowed) };
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).insert(connection_id.to_owned(), outgoing);
        (receiver, overflowed)
    }

    fn unregister(&self, connection_id: &str) {
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).remove(connection_id);
    }

    /// The ids of the open connections (tests).
    pub fn connection_ids(&self) -> Vec<String> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn open_connections(&self) -> usize {
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Accepts WebSocket connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<LocalGateway>,
    core: Arc<NotifyCore>,
    verifier: TokenVerifier,
    shutdown: CancellationToken,
) {
    let address = listener.local_addr().ok();
    info!(?address, "WebSocket gateway listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (gateway, core, shutdown) = (Arc::clone(&gateway), Arc::clone(&core), shutdown.clone());
                let verifier = verifier.clone();
                tokio::spawn(async move { handle_connection(stream, peer, gateway, core, verifier, shutdown).await });
            }
            Err(error) => warn!(%error, "accept failed"),
        }
    }
}

fn user_from_request(request: &Request, verifier: &TokenVerifier) -> Result<UserId, String> {
    let authorization = request.headers().get("authorization").and_then(|value| value.to_str().ok());
    let token = token_from_request(request.uri().query(), authorization).map_err(|e| e.to_string())?;
    verifier.verify(&token).map_err(|e| e.to_string())
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<LocalGateway>,
    core: Arc<NotifyCore>,
    verifier: TokenVerifier,
    shutdown: CancellationToken,
) {
    let mut user = None;
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        match user_from_request(request, &verifier) {
            Ok(found) => {
                user = Some(found);
                Ok(response)
            }
            Err(reason) => {
                debug!(%peer, %reason, "connection refused");
                let mut refusal = ErrorResponse::new(Some(reason));
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        }
    };
    let socket = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(socket) => socket,
        Err(error) => {
            debug!(%peer, %error, "handshake refused");
            return;
        }
    };
    let Some(user_id) = user else { return };
    let connection =
        Connection { connection_id: uuid::Uuid::new_v4().to_string(), user_id, connected_at: Timestamp::now() };
    if let Err(error) = core.connections.add_connection(&connection).await {
        warn!(%error, "could not record connection");
        return;
    }
    let (mut outgoing, overflowed) = gateway.register(&connection.connection_id);
    let (mut sink, mut source) = socket.split();
    info!(connection_id = %connection.connection_id, user_id = %connection.user_id, "connected");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            frame = outgoing.recv() => match frame {
                Some(text) => if sink.send(Message::text(text)).await.is_err() { break },
                None => {
                    if overflowed.load(Ordering::SeqCst) {
                        let close = CloseFrame {
                            code: CloseCode::from(SLOW_CONSUMER_CLOSE_CODE),
                            reason: "slow consumer: send queue full".into(),
                        };
                        let _ = sink.send(Message::Close(Some(close))).await;
                    }
                    break;
                }
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let replies = match parse_client_message(text.as_str()) {
                        Ok(message) => core.handle_client_message(&connection, message).await,
                        Err(bad) => vec![ServerMessage::from(bad)],
                    };
                    for reply in replies {
                        // Through the same channel as pushed states, so ordering holds.
                        let _ = gateway.post_to_connection(&connection.connection_id, &reply.to_json()).await;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = ServerMessage::error("bad_request", "send JSON text frames");
                    let _ = gateway.post_to_connection(&connection.connection_id, &reply.to_json()).await;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    gateway.unregister(&connection.connection_id);
    if let Err(error) = core.connections.remove_connection(&connection.connection_id).await {
        warn!(%error, "could not remove connection");
    }
    info!(connection_id = %connection.connection_id, "disconnected");
}
