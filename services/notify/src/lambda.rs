//! The WebSocket API's Lambda function (`iris-websocket-lambda`): API Gateway invokes it as the
//! `$connect` route's REQUEST authorizer and for every route (`$connect`, `$disconnect`,
//! `subscribe`, `unsubscribe`, `list`, `$default`). The same [`NotifyCore`] as the local gateway
//! serves the routes, so both speak one protocol with one identity model:
//!
//! - **authorizer**: the `token` query parameter (or `Authorization: Bearer`) is verified with the
//!   public key ([`crate::auth`]); Allow with `principalId` = `context.userId` = the token's subject,
//!   Deny otherwise (API Gateway answers the upgrade 403 and no connection exists).
//! - **`$connect`**: the user is the authorizer's `userId` (or `principalId`; a Cognito or other
//!   JWT authorizer that sets either works the same); the connection is recorded (2 h TTL in
//!   DynamoDB). No user: 401, the connection is refused.
//! - **`$disconnect`**: the connection and its subscriptions are removed.
//! - **every other route**: the body is a client message; replies and a subscription's current
//!   state are posted to the connection through the Management API, exactly as the local gateway
//!   posts them.

use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest};
use iris_core::ids::UserId;
use iris_core::ports::{Connection, PortError};
use iris_core::time::Timestamp;
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::auth::{AuthError, TokenVerifier, token_from_request};
use crate::core::NotifyCore;
use crate::protocol::{ServerMessage, parse_client_message};

/// What one invocation is.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// A REQUEST authorizer call for `$connect`.
    Authorizer(Box<ApiGatewayCustomAuthorizerRequestTypeRequest>),
    /// A WebSocket route, with the authorizer's context as API Gateway passes it (a flat map).
    Route { request: Box<ApiGatewayWebsocketProxyRequest>, authorizer: Value },
}

/// Why an event could not be handled at all (the Lambda invocation fails with it).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("not an API Gateway WebSocket or authorizer event: {0}")]
    UnknownEvent(String),
    #[error("{0}")]
    Port(#[from] PortError),
}

/// The routes and the authorizer, over the notify core.
pub struct WebSocketRoutes {
    pub core: Arc<NotifyCore>,
    /// `None` when no public key is configured: every connection is refused.
    pub verifier: Option<TokenVerifier>,
}

impl Invocation {
    /// Tells an authorizer event (`type: REQUEST` with a `methodArn`) from a route event (a
    /// `requestContext.routeKey`).
    pub fn from_event(event: Value) -> Result<Invocation, InvocationError> {
        let unknown = |e: serde_json::Error| InvocationError::UnknownEvent(e.to_string());
        if event.get("type").and_then(Value::as_str) == Some("REQUEST") && event.get("methodArn").is_some() {
            return Ok(Invocation::Authorizer(Box::new(serde_json::from_value(event).map_err(unknown)?)));
        }
        if event.pointer("/requestContext/routeKey").and_then(Value::as_str).is_some() {
            let authorizer = event.pointer("/requestContext/authorizer").cloned().unwrap_or(Value::Null);
            let request = serde_json::from_value(event).map_err(unknown)?;
            return Ok(Invocation::Route { request: Box::new(request), authorizer });
        }
        Err(InvocationError::UnknownEvent("neither a REQUEST authorizer call nor a WebSocket route".into()))
    }
}

impl WebSocketRoutes {
    /// Handles one invocation; the value is the Lambda's answer to API Gateway.
    pub async fn handle(&self, event: Value) -> Result<Value, InvocationError> {
        match Invocation::from_event(event)? {
            Invocation::Authorizer(request) => Ok(self.authorize(&request)),
            Invocation::Route { request, authorizer } => self.route(&request, &authorizer).await,
        }
    }

    /// The authorizer's policy: Allow for a valid token (with the user in the context), else Deny.
    pub fn authorize(&self, request: &ApiGatewayCustomAuthorizerRequestTypeRequest) -> Value {
        let method_arn = request.method_arn.clone().unwrap_or_default();
        let authorization = request.headers.get("authorization").and_then(|value| value.to_str().ok());
        // API Gateway has decoded the query string already.
        let token = match request.query_string_parameters.first("token").filter(|token| !token.is_empty()) {
            Some(token) => Ok(token.to_owned()),
            None => token_from_request(None, authorization),
        };
        let verified = match &self.verifier {
            None => Err(AuthError::InvalidToken("no public key configured (IRIS_TOKEN_PUBLIC_KEY)".into())),
            Some(verifier) => token.and_then(|token| verifier.verify(&token)),
        };
        match verified {
            Ok(user) => {
                info!(user_id = %user, "connection authorized");
                policy(user.as_str(), "Allow", &method_arn, Some(&user))
            }
            Err(error) => {
                warn!(%error, "connection refused");
                policy("anonymous", "Deny", &method_arn, None)
            }
        }
    }

    #[instrument(skip_all, fields(route, connection_id))]
    async fn route(
        &self,
        request: &ApiGatewayWebsocketProxyRequest,
        authorizer: &Value,
    ) -> Result<Value, InvocationError> {
        let context = &request.request_context;
        let route = context.route_key.as_deref().unwrap_or("$default");
        let Some(connection_id) = context.connection_id.as_deref() else {
            return Ok(status(400, "no connection id"));
        };
        tracing::Span::current().record("route", route).record("connection_id", connection_id);
        match route {
            "$connect" => {
                let user = ["userId", "principalId"]
                    .iter()
                    .filter_map(|name| authorizer.get(name).and_then(Value::as_str))
                    .find_map(|text| UserId::parse(text).ok());
                let Some(user_id) = user else {
                    warn!("no user from the authorizer: refused");
                    return Ok(status(401, "unauthorized"));
                };
                let connected_at = if context.connected_at > 0 {
                    Timestamp::from_epoch_millis(context.connected_at)
                } else {
                    Timestamp::now()
                };
                let connection = Connection { connection_id: connection_id.to_owned(), user_id, connected_at };
                self.core.connections.add_connection(&connection).await?;
                info!(user_id = %connection.user_id, "connected");
                Ok(status(200, "connected"))
            }
            "$disconnect" => {
                self.core.connections.remove_connection(connection_id).await?;
                info!("disconnected");
                Ok(status(200, "disconnected"))
            }
            _ => {
                let Some(connection) = self.core.connections.get_connection(connection_id).await? else {
                    // Expired (TTL) or never recorded: the client must reconnect.
                    let reply = ServerMessage::error("unknown_connection", "this connection is not known; reconnect");
                    self.post_reply(connection_id, &reply).await?;
                    return Ok(status(200, "unknown connection"));
                };
                let body = request.body.as_deref().unwrap_or("");
                let replies = match parse_client_message(body) {
                    Ok(message) => self.core.handle_client_message(&connection, message).await,
                    Err(bad) => vec![ServerMessage::from(bad)],
                };
                for reply in &replies {
                    self.post_reply(connection_id, reply).await?;
                }
                Ok(status(200, "ok"))
            }
        }
    }

    /// Posts a reply; a connection that went away meanwhile is removed, not an error.
    async fn post_reply(&self, connection_id: &str, reply: &ServerMessage) -> Result<(), PortError> {
        self.core.post(connection_id, &reply.to_json()).await.map(|_| ())
    }
}

/// An API Gateway authorizer answer (the IAM policy format WebSocket authorizers use).
fn policy(principal: &str, effect: &str, method_arn: &str, user: Option<&UserId>) -> Value {
    let mut answer = json!({
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": method_arn}],
        },
    });
    if let Some(user) = user {
        answer["context"] = json!({"userId": user.as_str()});
    }
    answer
}

/// A route's answer: API Gateway needs a status code; for `$connect` anything but 2xx refuses the connection.
fn status(code: u16, body: &str) -> Value {
    json!({"statusCode": code, "body": body})
}
