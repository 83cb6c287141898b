//! AUTH credentials: a file of salted Argon2 hashes, and the SASL PLAIN and
//! LOGIN message formats (RFC 4616, draft-murchison-sasl-login).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng as _;

/// Why a secrets file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source} (expected a JSON object of user -> PHC hash string)")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("user {user:?}: not an Argon2 PHC hash string: {reason}")]
    BadHash { user: String, reason: String },
}

/// Users and their Argon2 password hashes (PHC strings), as loaded from a
/// JSON file `{"user": "$argon2id$v=19$..."}`.
pub struct Secrets {
    users: HashMap<String, String>,
    /// Verified against when the user is unknown, so that an unknown user
    /// costs as much time as a wrong password (no user enumeration by
    /// timing). Made with the same parameters as the file's first hash.
    dummy: String,
}

impl fmt::Debug for Secrets {
    // Hashes stay out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Reads a JSON object of user name to PHC hash string.
    pub fn load(path: impl AsRef<Path>) -> Result<Secrets, SecretsError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|source| SecretsError::Io {
            path: path.to_owned(),
            source,
        })?;
        let users: HashMap<String, String> =
            serde_json::from_slice(&text).map_err(|source| SecretsError::Json {
                path: path.to_owned(),
                source,
            })?;
        Self::from_map(users)
    }

    /// Builds from user name to PHC hash string, checking every hash parses.
    pub fn from_map(users: HashMap<String, String>) -> Result<Secrets, SecretsError> {
        let mut model: Option<Argon2<'static>> = None;
        // Sorted so the dummy's parameters do not depend on hash order.
        let mut names: Vec<&String> = users.keys().collect();
        names.sort();
        for user in names {
            let phc = &users[user];
            let bad = |reason: String| SecretsError::BadHash {
                user: user.clone(),
                reason,
            };
            let parsed = PasswordHash::new(phc).map_err(|e| bad(e.to_string()))?;
            let hasher = hasher_for(&parsed).map_err(bad)?;
            model.get_or_insert(hasher);
        }
        let dummy = hash_with(&model.unwrap_or_default(), &random_token());
        Ok(Secrets { users, dummy })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a password. CPU-heavy by design (Argon2): call it from
    /// `spawn_blocking`. An unknown user is verified against a dummy hash
    /// so it takes as long as a known one.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (phc, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        // The verifier takes its parameters from the PHC string and
        // compares in constant time.
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

fn hasher_for(parsed: &PasswordHash<'_>) -> Result<Argon2<'static>, String> {
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(parsed).map_err(|e| e.to_string())?;
    Ok(Argon2::new(algorithm, version, params))
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    B64.encode(bytes)
}

fn hash_with(hasher: &Argon2<'_>, secret: &str) -> String {
    let salt_bytes: [u8; 16] = rand::rng().random();
    // A 16-byte salt is within SaltString's limits, so encoding cannot fail.
    let salt = SaltString::encode_b64(&salt_bytes).expect("16-byte salt encodes");
    hasher
        .hash_password(secret.as_bytes(), &salt)
        // Only invalid parameters or salts make hashing fail, and both come
        // from validated sources here.
        .expect("argon2 hashing with valid parameters")
        .to_string()
}

/// A fresh random secret (32 random bytes, URL-safe base64 without
/// padding: 43 characters), for generating client passwords.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hashes a secret for the secrets file: Argon2id with the crate's default
/// (OWASP-recommended) cost and a random salt, as a PHC string.
pub fn hash_secret(secret: &str) -> String {
    hash_with(&Argon2::default(), secret)
}

/// Like [`hash_secret`] with explicit cost parameters (tests use cheap
/// ones; production should keep the default).
pub fn hash_secret_with_params(secret: &str, params: Params) -> String {
    hash_with(
        &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        secret,
    )
}

/// A SASL exchange that could not produce credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SaslError {
    #[error("client cancelled")]
    Cancelled,
    #[error("invalid base64")]
    BadBase64,
    #[error("malformed credentials")]
    Malformed,
}

/// Decodes one base64 SASL client message (`*` cancels, RFC 4954 §4).
pub(crate) fn decode_b64(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim();
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    B64.decode(line).map_err(|_| SaslError::BadBase64)
}

/// PLAIN: `authzid NUL authcid NUL passwd` (RFC 4616). Acting as another
/// user (an authzid differing from authcid) is not supported.
pub(crate) fn parse_plain(msg: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, user, pass) = (text(authz)?, text(authc)?, text(pass)?);
    if user.is_empty() || (!authz.is_empty() && authz != user) {
        return Err(SaslError::Malformed);
    }
    Ok((user, pass))
}

/// One LOGIN field (user name or password): plain UTF-8.
pub(crate) fn parse_login_field(msg: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(msg).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(256, 1, 1, None).unwrap()
    }

    #[test]
    fn verify_known_unknown_and_wrong() {
        let users = HashMap::from([("alice".to_owned(), hash_secret_with_params("pw", cheap()))]);
        let s = Secrets::from_map(users).unwrap();
        assert!(s.verify("alice", "pw"));
        assert!(!s.verify("alice", "PW"));
        assert!(!s.verify("bob", "pw"));
        // The dummy hash takes the file's (cheap) parameters.
        assert!(s.dummy.contains("m=256,t=1,p=1"), "{}", s.dummy);
    }

    #[test]
    fn generated_secrets_are_random_and_printable() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn default_hash_is_argon2id_phc() {
        let h = hash_secret("secret");
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        let s = Secrets::from_map(HashMap::from([("u".to_owned(), h)])).unwrap();
        assert!(s.verify("u", "secret"));
    }

    #[test]
    fn load_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, r#"{"u": "not a hash"}"#).unwrap();
        assert!(matches!(
            Secrets::load(&p),
            Err(SecretsError::BadHash { user, .. }) if user == "u"
        ));
        std::fs::write(&p, "[1,2]").unwrap();
        assert!(matches!(Secrets::load(&p), Err(SecretsError::Json { .. })));
        assert!(matches!(
            Secrets::load(dir.path().join("missing")),
            Err(SecretsError::Io { .. })
        ));
        let good = format!(r#"{{"u": "{}"}}"#, hash_secret_with_params("x", cheap()));
        std::fs::write(&p, good).unwrap();
        let s = Secrets::load(&p).unwrap();
        assert!(s.verify("u", "x"));
        assert!(!format!("{s:?}").contains("argon2"));
    }

    #[test]
    fn sasl_plain_forms() {
        assert_eq!(
            parse_plain(b"\0user\0pass"),
            Ok(("user".into(), "pass".into()))
        );
        assert_eq!(
            parse_plain(b"user\0user\0pass"),
            Ok(("user".into(), "pass".into()))
        );
        assert_eq!(parse_plain(b"other\0user\0pass"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"user\0pass"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pass"), Err(SaslError::Malformed));
        assert_eq!(decode_b64("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_b64("!!!"), Err(SaslError::BadBase64));
    }
}
