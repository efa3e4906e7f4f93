//! A WebSocket client of the local gateway, for tests (feature `testing`): connect with a token
//! of the data directory's key (what `iris token issue` prints), send actions, read JSON frames.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iris_core::ids::UserId;
use iris_core::time::Timestamp;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::TokenSigner;

/// A client connection to the local gateway.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A token for `user` signed with the key pair of `data_dir`, valid for ten minutes.
pub fn token_for(data_dir: &Path, user: &str) -> String {
    TokenSigner::load_or_create(data_dir)
        .expect("token key")
        .issue(&UserId::parse(user).expect("user id"), Duration::from_secs(600), Timestamp::now())
        .expect("token")
}

/// A client of `user` connected to the gateway at `address` with a token in the query.
pub async fn connect(data_dir: &Path, address: SocketAddr, user: &str) -> Socket {
    let token = token_for(data_dir, user);
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/?token={token}")).await.expect("connect");
    socket
}

pub async fn send(socket: &mut Socket, value: serde_json::Value) {
    socket.send(Message::text(value.to_string())).await.expect("send");
}

/// The next text frame as JSON, within a minute.
pub async fn next_json(socket: &mut Socket) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a message within 60 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}
