//! Workload tokens for local mode: how a workload outside Kubernetes proves
//! to the identity CA which service account it runs as.
//!
//! A token is `weft1.<claims>.<mac>`: base64url JSON claims (namespace,
//! service account, audience, issue and expiry times) and an HMAC-SHA256
//! over them with the controller's token key. A JWT library would add a
//! dependency tree for one algorithm with one issuer and one verifier, both
//! weft; HMAC comes from ring, which weft already builds.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::hmac;
use std::time::{Duration, SystemTime};

const PREFIX: &str = "weft1.";
const KEY_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The workload's namespace.
    pub ns: String,
    /// The workload's service account.
    pub sa: String,
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("the token is not a weft token")]
    Malformed,
    #[error("the token's signature is not valid (forged, or signed with another token key)")]
    BadSignature,
    #[error("the token expired at {exp} (unix time)")]
    Expired { exp: i64 },
    #[error("the token is for audience {0:?}, not {aud}", aud = crate::TOKEN_AUDIENCE)]
    WrongAudience(String),
}

/// The controller's token-signing key.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
    /// The key as it is stored (base64, one line).
    encoded: String,
}

impl TokenKey {
    /// A new random key; the second value is what to store.
    pub fn generate() -> (Self, String) {
        let mut raw = [0u8; KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .expect("the system's random source works");
        let encoded = format!("{}\n", B64.encode(raw));
        let key = Self::from_stored(&encoded).expect("a generated key is valid");
        (key, encoded)
    }

    /// Reads a stored key (`token.key`).
    pub fn from_stored(stored: &str) -> Result<Self, String> {
        let raw = B64.decode(stored.trim()).map_err(|e| format!("the token key is not base64: {e}"))?;
        if raw.len() < KEY_LEN {
            return Err(format!("the token key is {} bytes; it must be at least {KEY_LEN}", raw.len()));
        }
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, &raw), encoded: stored.trim().to_string() + "\n" })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.encoded.as_bytes()
    }

    /// A token for the workloads running as `sa` in `ns`, valid for `ttl`.
    pub fn issue(&self, ns: &str, sa: &str, ttl: Duration, now: SystemTime) -> String {
        let iat = crate::ca::unix_secs(now);
        let claims = Claims {
            ns: ns.into(),
            sa: sa.into(),
            aud: crate::TOKEN_AUDIENCE.into(),
            iat,
            exp: iat + ttl.as_secs() as i64,
        };
        let body = B64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mac = hmac::sign(&self.key, body.as_bytes());
        format!("{PREFIX}{body}.{}", B64.encode(mac.as_ref()))
    }

    /// The claims of a token this key signed, if it is still valid. The
    /// signature is checked (in constant time) before anything in the
    /// claims is believed.
    pub fn verify(&self, token: &[u8], now: SystemTime) -> Result<Claims, TokenError> {
        let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (body, mac) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.aud != crate::TOKEN_AUDIENCE {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if claims.exp <= crate::ca::unix_secs(now) {
            return Err(TokenError::Expired { exp: claims.exp });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire() {
        let (key, stored) = TokenKey::generate();
        let now = SystemTime::now();
        let token = key.issue("shop", "web", Duration::from_secs(3600), now);
        let claims = key.verify(token.as_bytes(), now).unwrap();
        assert_eq!((claims.ns.as_str(), claims.sa.as_str()), ("shop", "web"));
        // Stored and read back, the key still verifies what it signed.
        let reread = TokenKey::from_stored(&stored).unwrap();
        assert!(reread.verify(format!("{token}\n").as_bytes(), now).is_ok());
        let later = now + Duration::from_secs(3601);
        assert!(matches!(key.verify(token.as_bytes(), later), Err(TokenError::Expired { .. })));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let (key, _) = TokenKey::generate();
        let (other, _) = TokenKey::generate();
        let now = SystemTime::now();
        let foreign = other.issue("shop", "web", Duration::from_secs(3600), now);
        assert_eq!(key.verify(foreign.as_bytes(), now), Err(TokenError::BadSignature));

        // Claims rewritten to another service account, signature kept.
        let token = key.issue("shop", "web", Duration::from_secs(3600), now);
        let (_, mac) = token.rsplit_once('.').unwrap();
        let claims = Claims {
            ns: "shop".into(),
            sa: "admin".into(),
            aud: crate::TOKEN_AUDIENCE.into(),
            iat: 0,
            exp: i64::MAX,
        };
        let body = B64.encode(serde_json::to_vec(&claims).unwrap());
        let forged = format!("{PREFIX}{body}.{mac}");
        assert_eq!(key.verify(forged.as_bytes(), now), Err(TokenError::BadSignature));

        assert_eq!(key.verify(b"", now), Err(TokenError::Missing));
        assert_eq!(key.verify(b"eyJhbGciOi.x.y", now), Err(TokenError::Malformed));
        assert_eq!(key.verify(&[0xff, 0xfe], now), Err(TokenError::Malformed));
        assert!(TokenKey::from_stored("c2hvcnQ=").is_err());
    }
}
