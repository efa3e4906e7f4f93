//! WebSocket identity: tokens are JWTs signed with Ed25519 (`alg: EdDSA`), `sub` = the user id.
//!
//! `iris token issue --user NAME` signs them with the key pair kept in the data directory
//! ([`TokenSigner::load_or_create`]); whatever verifies them needs only the public key
//! ([`TokenVerifier`]): the local gateway (from the same key file), and in AWS the `$connect`
//! authorizer Lambda (`IRIS_TOKEN_PUBLIC_KEY`, printed by `iris token public-key`). No secret ever
//! sits in a Lambda's configuration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use iris_core::ids::UserId;
use iris_core::time::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// `iss` of every token iris signs.
pub const TOKEN_ISSUER: &str = "iris";
/// `aud` of every token iris signs: the WebSocket API.
pub const TOKEN_AUDIENCE: &str = "iris-websocket";
/// Default lifetime of a token (`iris token issue --ttl-hours`).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The longest lifetime (`exp − iat`) a token may have: longer ones are refused when issued and
/// when presented, so a leaked token is useful for a day at most.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Clock skew tolerated between the signer and the verifier (seconds), for `exp`, `nbf` and `iat`.
const CLOCK_LEEWAY_SECONDS: i64 = 30;
/// File in the data directory holding the signing key (PKCS#8, owner-only permissions).
pub const SIGNING_KEY_FILE: &str = "token-signing-key.pk8";

/// Why a token, or a key, was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: connect with ?token=<token> (from `iris token issue --user NAME`) or an Authorization: Bearer header"
    )]
    MissingToken,
    #[error("token refused: {0}")]
    InvalidToken(String),
    #[error("token refused: it is valid for {lifetime_seconds} s, more than the {limit_seconds} s allowed")]
    LifetimeTooLong { lifetime_seconds: i64, limit_seconds: u64 },
    #[error("token refused: it was issued in the future (iat {iat}, now {now})")]
    IssuedInTheFuture { iat: i64, now: i64 },
    #[error("the token's subject is not a valid user id: {0}")]
    InvalidSubject(String),
    #[error("invalid public key (expected the base64url of 32 bytes, as `iris token public-key` prints): {0}")]
    InvalidPublicKey(String),
    #[error("signing key {path}: {message}")]
    SigningKey { path: PathBuf, message: String },
}

/// What an iris token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    /// Not valid before (seconds since the epoch); checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
}

/// Checks tokens against a public key.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    public_key: [u8; 32],
}

/// Signs tokens (the holder of the key pair: the `iris` command on the operator's machine).
pub struct TokenSigner {
    key: EncodingKey,
    public_key: [u8; 32],
}

impl TokenVerifier {
    /// From the base64url (no padding) of the 32-byte Ed25519 public key.
    pub fn from_public_key(text: &str) -> Result<TokenVerifier, AuthError> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|e| AuthError::InvalidPublicKey(e.to_string()))?;
        let public_key: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| AuthError::InvalidPublicKey(format!("{} bytes, not 32", b.len())))?;
        Ok(TokenVerifier { key: DecodingKey::from_ed_der(&public_key), public_key })
    }

    /// The public key as `from_public_key` reads it.
    pub fn public_key_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key)
    }

    /// The user a valid token names: signature, issuer, audience, expiry and not-before checked,
    /// issued no later than now, and valid for at most [`MAX_TOKEN_LIFETIME`].
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = CLOCK_LEEWAY_SECONDS as u64;
        let data = jsonwebtoken::decode::<TokenClaims>(token.trim(), &self.key, &validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let claims = data.claims;
        let now = Timestamp::now().epoch_seconds();
        if claims.iat > now + CLOCK_LEEWAY_SECONDS {
            return Err(AuthError::IssuedInTheFuture { iat: claims.iat, now });
        }
        // `iat` is not in the future, so `exp − iat` bounds how long the token can still be used.
        let lifetime_seconds = claims.exp.saturating_sub(claims.iat);
        if lifetime_seconds > MAX_TOKEN_LIFETIME.as_secs() as i64 {
            return Err(AuthError::LifetimeTooLong { lifetime_seconds, limit_seconds: MAX_TOKEN_LIFETIME.as_secs() });
        }
        UserId::parse(&claims.sub).map_err(|e| AuthError::InvalidSubject(e.to_string()))
    }
}

impl TokenSigner {
    /// A fresh key pair (tests; `load_or_create` for a lasting one).
    pub fn generate() -> Result<TokenSigner, AuthError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| AuthError::SigningKey {
            path: PathBuf::new(),
            message: format!("key generation failed: {e}"),
        })?;
        TokenSigner::from_pkcs8(document.as_ref(), Path::new(""))
    }

    /// The key pair in `<data dir>/token-signing-key.pk8`, created (owner-only) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<TokenSigner, AuthError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        let failure = |message: String| AuthError::SigningKey { path: path.clone(), message };
        match std::fs::read(&path) {
            Ok(bytes) => return TokenSigner::from_pkcs8(&bytes, &path),
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(failure(error.to_string())),
            Err(_) => {}
        }
        std::fs::create_dir_all(data_dir).map_err(|e| failure(e.to_string()))?;
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| failure(format!("key generation failed: {e}")))?;
        // Written whole under a private name, then linked into place: a reader never sees a
        // partial key, and of two processes creating it at once, the second uses the first's.
        let temporary = data_dir.join(format!(".{SIGNING_KEY_FILE}.{}.{}", std::process::id(), uuid::Uuid::new_v4()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options
            .open(&temporary)
            .and_then(|mut file| file.write_all(document.as_ref()).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::hard_link(&temporary, &path));
        let _ = std::fs::remove_file(&temporary);
        match written {
            Ok(()) => TokenSigner::from_pkcs8(document.as_ref(), &path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path).map_err(|e| failure(e.to_string()))?;
                TokenSigner::from_pkcs8(&bytes, &path)
            }
            Err(error) => Err(failure(error.to_string())),
        }
    }

    fn from_pkcs8(document: &[u8], path: &Path) -> Result<TokenSigner, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(document).map_err(|e| AuthError::SigningKey {
            path: path.to_owned(),
            message: format!("not an Ed25519 key: {e}"),
        })?;
        let public_key: [u8; 32] = pair.public_key().as_ref().try_into().map_err(|_| AuthError::SigningKey {
            path: path.to_owned(),
            message: "unexpected public key length".into(),
        })?;
        Ok(TokenSigner { key: EncodingKey::from_ed_der(document), public_key })
    }

    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier { key: DecodingKey::from_ed_der(&self.public_key), public_key: self.public_key }
    }

    /// A token naming `user`, valid for `lifetime` from `now` (not before `now`); a lifetime over
    /// [`MAX_TOKEN_LIFETIME`] is refused.
    pub fn issue(&self, user: &UserId, lifetime: Duration, now: Timestamp) -> Result<String, AuthError> {
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(AuthError::LifetimeTooLong {
                lifetime_seconds: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
                limit_seconds: MAX_TOKEN_LIFETIME.as_secs(),
            });
        }
        let claims = TokenClaims {
            sub: user.as_str().to_owned(),
            iss: TOKEN_ISSUER.to_owned(),
            aud: TOKEN_AUDIENCE.to_owned(),
            iat: now.epoch_seconds(),
            nbf: Some(now.epoch_seconds()),
            exp: now.epoch_seconds() + lifetime.as_secs() as i64,
        };
        self.sign(&claims)
    }

    /// Signs any claims as they are (tests build hostile tokens with it).
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| AuthError::InvalidToken(format!("signing failed: {e}")))
    }
}

/// The token of a WebSocket upgrade request: the `token` query parameter (browsers cannot set
/// headers on a WebSocket) or an `Authorization: Bearer` header.
pub fn token_from_request(query: Option<&str>, authorization: Option<&str>) -> Result<String, AuthError> {
    if let Some(query) = query {
        for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            if name == "token" && !value.is_empty() {
                return Ok(percent_decode(value));
            }
        }
    }
    if let Some(bearer) = authorization.and_then(|value| value.strip_prefix("Bearer ")) {
        return Ok(bearer.trim().to_owned());
    }
    Err(AuthError::MissingToken)
}

fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_and_nothing_else_passes() {
        let signer = TokenSigner::generate().unwrap();
        let alice = UserId::parse("alice").unwrap();
        let now = Timestamp::now();
        let token = signer.issue(&alice, Duration::from_secs(60), now).unwrap();
        let verifier = TokenVerifier::from_public_key(&signer.verifier().public_key_text()).unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), alice);

        let other = TokenSigner::generate().unwrap();
        assert!(matches!(other.verifier().verify(&token), Err(AuthError::InvalidToken(_))), "another key");
        let expired = signer.issue(&alice, Duration::from_secs(1), Timestamp::from_epoch_millis(1_000_000)).unwrap();
        assert!(matches!(verifier.verify(&expired), Err(AuthError::InvalidToken(_))), "expired");
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').unwrap() + 3, 'x');
        assert!(verifier.verify(&tampered).is_err(), "tampered");
        assert!(verifier.verify("not a token").is_err());
        for bad_key in ["", "abc", &URL_SAFE_NO_PAD.encode([0u8; 31])] {
            assert!(TokenVerifier::from_public_key(bad_key).is_err(), "{bad_key:?}");
        }
    }

    /// Issue #24: a token valid for longer than a day (one expiring in 2200 was accepted before),
    /// one not yet valid, and one issued in the future are refused; the signer refuses to issue
    /// one over the cap.
    #[test]
    fn lifetime_not_before_and_issue_time_are_enforced() {
        let signer = TokenSigner::generate().unwrap();
        let verifier = signer.verifier();
        let now = Timestamp::now().epoch_seconds();
        let claims = |iat: i64, nbf: Option<i64>, exp: i64| TokenClaims {
            sub: "alice".into(),
            iss: TOKEN_ISSUER.into(),
            aud: TOKEN_AUDIENCE.into(),
            iat,
            nbf,
            exp,
        };
        let year_2200 = 7_258_118_400;
        let refused = verifier.verify(&signer.sign(&claims(now, None, year_2200)).unwrap()).unwrap_err();
        assert!(matches!(refused, AuthError::LifetimeTooLong { .. }), "{refused}");
        let day = MAX_TOKEN_LIFETIME.as_secs() as i64;
        assert!(verifier.verify(&signer.sign(&claims(now, None, now + day)).unwrap()).is_ok(), "exactly a day");
        let over = verifier.verify(&signer.sign(&claims(now - 10, None, now + day)).unwrap()).unwrap_err();
        assert!(matches!(over, AuthError::LifetimeTooLong { .. }), "{over}");
        let not_yet = verifier.verify(&signer.sign(&claims(now, Some(now + 3600), now + 7200)).unwrap()).unwrap_err();
        assert!(matches!(not_yet, AuthError::InvalidToken(ref m) if m.contains("ImmatureSignature")), "{not_yet}");
        let future = verifier.verify(&signer.sign(&claims(now + 3600, None, now + 7200)).unwrap()).unwrap_err();
        assert!(matches!(future, AuthError::IssuedInTheFuture { .. }), "{future}");
        let alice = UserId::parse("alice").unwrap();
        let too_long = signer.issue(&alice, MAX_TOKEN_LIFETIME + Duration::from_secs(1), Timestamp::now());
        assert!(matches!(too_long, Err(AuthError::LifetimeTooLong { .. })));
        let issued = signer.issue(&alice, MAX_TOKEN_LIFETIME, Timestamp::now()).unwrap();
        assert_eq!(verifier.verify(&issued).unwrap(), alice);
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let directory = tempfile::tempdir().unwrap();
        let first = TokenSigner::load_or_create(directory.path()).unwrap();
        let second = TokenSigner::load_or_create(directory.path()).unwrap();
        assert_eq!(first.verifier().public_key_text(), second.verifier().public_key_text());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(directory.path().join(SIGNING_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(directory.path().join(SIGNING_KEY_FILE), b"garbage").unwrap();
        assert!(matches!(TokenSigner::load_or_create(directory.path()), Err(AuthError::SigningKey { .. })));
    }

    #[test]
    fn tokens_come_from_the_query_or_the_authorization_header() {
        assert_eq!(token_from_request(Some("a=1&token=abc.def"), None).unwrap(), "abc.def");
        assert_eq!(token_from_request(Some("token=a%2Eb"), None).unwrap(), "a.b");
        assert_eq!(token_from_request(None, Some("Bearer xyz")).unwrap(), "xyz");
        assert!(matches!(token_from_request(Some("user=alice"), None), Err(AuthError::MissingToken)));
        assert!(matches!(token_from_request(Some("token="), Some("Basic x")), Err(AuthError::MissingToken)));
    }
}
