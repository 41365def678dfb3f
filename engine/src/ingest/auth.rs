//! Who may send events through the gateway: bearer tokens, HMAC-signed requests, and (with
//! mutual TLS) client certificates.
//!
//! Owns reading the credential files (`name:secret` lines; a problem names the file and line,
//! never the secret), the constant-time checks, and the memory of signatures already used.
//! Tokens are kept only as SHA-256 digests and compared digest to digest in constant time, so
//! neither a token's content nor its length shows in the time a refusal takes. HMAC keys are
//! held in a type whose Debug prints `***`. Nothing here logs, and no error carries a secret.
//!
//! Replays: a signature is accepted once while its timestamp is within the window; the seen
//! signatures are kept in this process's memory until their timestamp leaves the window.
//! Replicas share nothing here: a signed request replayed to another replica within the window
//! is accepted there, and only the stream's duplicate window (the same `Nats-Msg-Id`) keeps it
//! from being stored twice.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::IngestError;
use crate::clock::Clock;

/// Shortest token or key accepted from a file.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a request was refused as unauthenticated. Its [`code`](AuthFailure::code) labels the
/// metric; its message is what the sender reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials at all.
    Missing,
    /// A bearer token that is not in the tokens file (or no tokens are configured).
    BadToken,
    /// A signature that is malformed or matches no key, or a signed request without a valid
    /// timestamp.
    BadSignature,
    /// The timestamp is outside the replay window.
    Stale,
    /// The signature was accepted before.
    Replayed,
}

impl AuthFailure {
    /// A short, stable label for metrics.
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::BadToken => "bad_token",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Stale => "stale_timestamp",
            AuthFailure::Replayed => "replayed",
        }
    }

    /// What the sender is told.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing credentials: send `Authorization: Bearer <token>`, or sign the request \
                 with `X-Riposte-Timestamp` and `X-Riposte-Signature`"
            }
            AuthFailure::BadToken => "invalid bearer token",
            AuthFailure::BadSignature => {
                "invalid signature: expected `X-Riposte-Signature: sha256=<hex of \
                 HMAC-SHA256(key, \"<X-Riposte-Timestamp>.<body>\")>` with a Unix-seconds timestamp"
            }
            AuthFailure::Stale => "the request's timestamp is outside the replay window",
            AuthFailure::Replayed => "this signature was used before (replay)",
        }
    }
}

/// An HMAC key from the keys file.
struct Key {
    name: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}: ***)", self.name)
    }
}

/// The credentials the gateway accepts, compiled from the config's files.
pub struct Credentials {
    /// Token names and the SHA-256 of each token.
    tokens: Vec<(String, [u8; 32])>,
    keys: Vec<Key>,
    window_secs: i64,
    seen: Mutex<Seen>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "tokens",
                &self.tokens.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("keys", &self.keys)
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

/// Signatures accepted, with the Unix second after which their timestamp is stale anyway.
#[derive(Debug, Default)]
struct Seen {
    until: HashMap<[u8; 32], i64>,
    next_prune: usize,
}

impl Credentials {
    /// Reads the tokens and keys files (either may be absent).
    pub fn load(
        tokens_file: Option<&Path>,
        keys_file: Option<&Path>,
        window: std::time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Credentials, IngestError> {
        let tokens = match tokens_file {
            Some(p) => read_pairs(p)?
                .into_iter()
                .map(|(name, token)| (name, Sha256::digest(token.as_bytes()).into()))
                .collect(),
            None => Vec::new(),
        };
        let keys = match keys_file {
            Some(p) => read_pairs(p)?
                .into_iter()
                .map(|(name, secret)| Key {
                    name,
                    secret: secret.into_bytes(),
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(Credentials {
            tokens,
            keys,
            window_secs: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
            seen: Mutex::new(Seen::default()),
            clock,
        })
    }

    /// Whether bearer tokens are configured (the 401 then says `WWW-Authenticate: Bearer`).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The name of the token in an `Authorization` header's value.
    pub fn bearer(&self, authorization: &[u8]) -> Result<String, AuthFailure> {
        let token = strip_scheme(authorization).ok_or(AuthFailure::BadToken)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every entry is compared, so the time taken does not say which one matched.
        let mut found: Option<&str> = None;
        for (name, known) in &self.tokens {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        found.map(str::to_owned).ok_or(AuthFailure::BadToken)
    }

    /// Checks a signed request's timestamp header against the window; done before the body is
    /// read. Returns the timestamp.
    pub fn timestamp(&self, header: Option<&[u8]>) -> Result<i64, AuthFailure> {
        let text = header.ok_or(AuthFailure::BadSignature)?;
        if text.is_empty() || text.len() > 12 || !text.iter().all(u8::is_ascii_digit) {
            return Err(AuthFailure::BadSignature);
        }
        let ts: i64 = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(AuthFailure::BadSignature)?;
        let now = self.clock.now().timestamp();
        if (now - ts).abs() > self.window_secs {
            return Err(AuthFailure::Stale);
        }
        Ok(ts)
    }

    /// Verifies `X-Riposte-Signature` over `"<timestamp>.<body>"` and records it as used.
    /// Returns the name of the key that signed it.
    pub fn signed(&self, ts: i64, signature: &[u8], body: &[u8]) -> Result<String, AuthFailure> {
        let hex_text = signature
            .strip_prefix(b"sha256=")
            .ok_or(AuthFailure::BadSignature)?;
        let mut sig = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut sig).map_err(|_| AuthFailure::BadSignature)?;
        let ts_text = ts.to_string();
        let mut found: Option<&str> = None;
        for key in &self.keys {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.secret) else {
                continue;
            };
            mac.update(ts_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            // `verify_slice` compares in constant time.
            if mac.verify_slice(&sig).is_ok() {
                found = Some(&key.name);
            }
        }
        let name = found.ok_or(AuthFailure::BadSignature)?;
        self.first_use(sig, ts)?;
        Ok(name.to_owned())
    }

    /// Records a signature, refusing one already seen while its timestamp is in the window.
    fn first_use(&self, sig: [u8; 32], ts: i64) -> Result<(), AuthFailure> {
        let now = self.clock.now().timestamp();
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.until.get(&sig).is_some_and(|until| *until >= now) {
            return Err(AuthFailure::Replayed);
        }
        seen.until.insert(sig, ts.saturating_add(self.window_secs));
        // Forget what left the window, once the map has doubled since the last time: the cost
        // per request stays constant and memory follows the signed request rate.
        if seen.until.len() >= seen.next_prune {
            seen.until.retain(|_, until| *until >= now);
            seen.next_prune = (seen.until.len() * 2).max(1024);
        }
        Ok(())
    }
}

/// The token of `Bearer <token>` (the scheme in any case).
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Reads `name:secret` lines (`#` comments, blank lines). Problems name the line, never the
/// secret.
fn read_pairs(path: &Path) -> Result<Vec<(String, String)>, IngestError> {
    let text = std::fs::read_to_string(path).map_err(|e| IngestError::Credentials {
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, secret)) = line.split_once(':') else {
            problems.push(format!("line {n}: expected `name:secret`"));
            continue;
        };
        let (name, secret) = (name.trim(), secret.trim());
        if !valid_name(name) {
            problems.push(format!(
                "line {n}: the name must be 1 to 64 letters, digits, `.`, `_` or `-`"
            ));
        } else if secret.len() < MIN_SECRET_LEN {
            problems.push(format!(
                "line {n}: the secret of `{name}` is shorter than {MIN_SECRET_LEN} characters"
            ));
        } else if out.iter().any(|(known, _)| known == name) {
            problems.push(format!("line {n}: `{name}` is named twice"));
        } else {
            out.push((name.to_owned(), secret.to_owned()));
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push("the file names no credential".to_owned());
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(IngestError::Credentials {
            path: path.to_owned(),
            reason: problems.join("; "),
        })
    }
}

/// Names recorded on events (and in a NATS header): `[A-Za-z0-9._-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::clock::FixedClock;
    use chrono::TimeZone;

    const TOKEN: &str = "tok-0123456789abcdef";
    const KEY: &str = "key-0123456789abcdef";

    fn creds(now: i64) -> (tempfile::TempDir, Credentials) {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("# senders\nfalcosidekick:{TOKEN}\n\nharbor : other-token-0123456789\n"),
        )
        .unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, format!("ci:{KEY}\n")).unwrap();
        let clock = Arc::new(FixedClock::new(
            chrono::Utc.timestamp_opt(now, 0).single().unwrap(),
        ));
        let c = Credentials::load(
            Some(&tokens),
            Some(&keys),
            std::time::Duration::from_secs(300),
            clock,
        )
        .unwrap();
        (dir, c)
    }

    fn sign(key: &str, ts: i64, body: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes())).into_bytes()
    }

    #[test]
    fn a_bearer_token_is_known_by_its_name() {
        let (_d, c) = creds(1_000_000);
        assert_eq!(
            c.bearer(format!("Bearer {TOKEN}").as_bytes()).unwrap(),
            "falcosidekick"
        );
        assert_eq!(
            c.bearer(b"bearer other-token-0123456789").unwrap(),
            "harbor"
        );
        assert_eq!(
            c.bearer(b"Bearer tok-0123456789abcdeX"),
            Err(AuthFailure::BadToken)
        );
        assert_eq!(
            c.bearer(format!("Basic {TOKEN}").as_bytes()),
            Err(AuthFailure::BadToken)
        );
        assert_eq!(c.bearer(b"Bearer "), Err(AuthFailure::BadToken));
    }

    #[test]
    fn a_signature_is_accepted_once_within_the_window() {
        let now = 1_700_000_000;
        let (_d, c) = creds(now);
        let body = br#"{"rule":"x"}"#;
        let ts = c.timestamp(Some(now.to_string().as_bytes())).unwrap();
        let sig = sign(KEY, ts, body);
        assert_eq!(c.signed(ts, &sig, body).unwrap(), "ci");
        assert_eq!(c.signed(ts, &sig, body), Err(AuthFailure::Replayed));
        // Another body, or another key, is not the same signature.
        assert_eq!(
            c.signed(ts, &sign(KEY, ts, b"{}"), body),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            c.signed(ts, &sign("wrong-key-0123456789", ts, body), body),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            c.signed(ts, b"sha256=zz", body),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            c.signed(ts, b"md5=00", body),
            Err(AuthFailure::BadSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_window_are_stale() {
        let now = 1_700_000_000;
        let (_d, c) = creds(now);
        let t = |v: i64| c.timestamp(Some(v.to_string().as_bytes()));
        assert_eq!(t(now - 300), Ok(now - 300));
        assert_eq!(t(now + 300), Ok(now + 300));
        assert_eq!(t(now - 301), Err(AuthFailure::Stale));
        assert_eq!(t(now + 301), Err(AuthFailure::Stale));
        assert_eq!(c.timestamp(None), Err(AuthFailure::BadSignature));
        assert_eq!(c.timestamp(Some(b"-5")), Err(AuthFailure::BadSignature));
        assert_eq!(
            c.timestamp(Some(b"2026-01-01T00:00:00Z")),
            Err(AuthFailure::BadSignature)
        );
    }

    #[test]
    fn problems_in_a_credentials_file_name_the_line_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "no-colon-here-secret\nok:t1ny-s3c\nbad name:0123456789abcdefXYZ\ndup:0123456789abcdefXYZ\ndup:0123456789abcdefXYZ\n",
        )
        .unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        assert!(err.contains("line 1: expected `name:secret`"), "{err}");
        assert!(
            err.contains("line 2: the secret of `ok` is shorter than 16"),
            "{err}"
        );
        assert!(err.contains("line 3: the name must be"), "{err}");
        assert!(err.contains("line 5: `dup` is named twice"), "{err}");
        for secret in ["no-colon-here-secret", "t1ny-s3c", "0123456789abcdefXYZ"] {
            assert!(!err.contains(secret), "{err}");
        }
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read_pairs(&path)
            .unwrap_err()
            .to_string()
            .contains("names no credential"));
    }

    #[test]
    fn keys_never_print() {
        let (_d, c) = creds(0);
        let shown = format!("{c:?}");
        assert!(!shown.contains(KEY) && !shown.contains(TOKEN), "{shown}");
    }
}
