//! AUTH PLAIN and LOGIN (RFC 4954) over the session's connection, with
//! the listener's failure limits (`auth_limit`).

use std::time::Instant;

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Flow, Session};
use crate::auth::{self, SaslError};
use crate::auth_limit::{AuthFailureLimits, ClientKey, Scope};
use crate::conn::LineRead;
use crate::metrics::SmtpMetrics;
use crate::reply::{self, Reply};

/// Why a SASL exchange stopped before producing credentials.
enum AuthAbort {
    Sasl(SaslError),
    TooLong,
    /// The connection must close (timeout, EOF, error).
    Close(Option<Reply>),
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// AUTH: state checks, the SASL exchange, then password verification
    /// off the async workers. Failures count as bad commands, which bounds
    /// password guessing per connection; the failure limits bound it
    /// across connections (a growing delay before each 535, lockouts
    /// answered 454 without checking the password).
    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        let Some(secrets) = self.cfg.auth.clone() else {
            return self.reject(reply::NOT_IMPLEMENTED.response(), "not_implemented");
        };
        if self.helo.is_none() {
            return self.reject(reply::NEED_HELO.response(), "sequence");
        }
        if self.auth_user.is_some() {
            return self.reject(reply::ALREADY_AUTH.response(), "sequence");
        }
        if self.tx.is_some() {
            return self.reject(reply::AUTH_IN_TX.response(), "sequence");
        }
        if !self.auth_allowed() {
            return self.reject(reply::AUTH_NEEDS_TLS.response(), "auth");
        }
        let limits = self.cfg.auth_failures.clone();
        let client = ClientKey::of(self.peer.ip());
        // A locked-out client is refused before the exchange, so it does
        // not even send its secret.
        if let Some(l) = &limits
            && let Some(scope) = l.tracker.locked(client, None, Instant::now())
        {
            return self.auth_locked(scope, None);
        }
        let creds = match mechanism {
            AUTH_PLAIN => self.sasl_plain(&initial).await,
            AUTH_LOGIN => self.sasl_login(&initial).await,
            _ => return self.reject(reply::AUTH_MECHANISM.response(), "auth"),
        };
        let (user, password) = match creds {
            Ok(c) => c,
            Err(AuthAbort::Close(r)) => {
                if let Some(r) = r {
                    self.conn.queue_reply(r);
                }
                return Flow::Close;
            }
            Err(AuthAbort::TooLong) => {
                return self.reject(reply::LINE_TOO_LONG.response(), "line_too_long");
            }
            Err(AuthAbort::Sasl(SaslError::Cancelled)) => {
                return self.reject(reply::AUTH_CANCELLED.response(), "auth");
            }
            Err(AuthAbort::Sasl(SaslError::BadBase64)) => {
                return self.reject(reply::AUTH_BAD_BASE64.response(), "auth");
            }
            Err(AuthAbort::Sasl(SaslError::Malformed)) => {
                return self.reject(reply::AUTH_FAILED.response(), "auth");
            }
        };
        // The user is known now; the client may also have been locked out
        // by another session meanwhile.
        if let Some(l) = &limits
            && let Some(scope) = l.tracker.locked(client, Some(&user), Instant::now())
        {
            return self.auth_locked(scope, Some(&user));
        }
        // Argon2 is deliberately slow: keep it off the async workers.
        let checked_user = user.clone();
        let ok = tokio::task::spawn_blocking(move || secrets.verify(&checked_user, &password))
            .await
            .unwrap_or(false);
        if ok {
            if let Some(l) = &limits {
                l.tracker
                    .record_success(&l.policy, client, &user, Instant::now());
            }
            // User names are client text: `?` escapes them, so no name
            // can forge a log line.
            debug!(peer = %self.peer, user = ?user, "authenticated");
            self.auth_user = Some(user);
            self.reply(reply::AUTH_OK)
        } else {
            self.metrics
                .auth_failures_total
                .get_or_create(&SmtpMetrics::listener(&self.cfg.listener_name))
                .inc();
            tracing::info!(peer = %self.peer, user = ?user, listener = %self.cfg.listener_name, "authentication failed");
            if let Some(l) = &limits {
                self.auth_failed(l, client, &user).await;
            }
            self.reject(reply::AUTH_FAILED.response(), "auth")
        }
    }

    /// Counts a wrong password against the failure limits: logs and
    /// counts the lockouts it starts, then waits the client's delay (this
    /// session only) before the 535 goes out.
    async fn auth_failed(&mut self, l: &AuthFailureLimits, client: ClientKey, user: &str) {
        let failure = l
            .tracker
            .record_failure(&l.policy, client, user, Instant::now());
        let listener = &self.cfg.listener_name;
        for (scope, failures) in failure.lockouts {
            self.metrics
                .auth_lockouts_total
                .get_or_create(&SmtpMetrics::auth_scope(listener, scope.as_str()))
                .inc();
            // The one line per lockout, for fail2ban-style tooling (its
            // format is documented in the README): stable target, fields
            // in a fixed order, the only client text (the user name) last,
            // quoted and escaped, so no name can forge a line or a field.
            // A root event (`parent: None`): inside the session span the
            // line would start with the span's fields, and fail2ban's
            // anchored pattern would no longer match.
            tracing::warn!(
                target: "koukan::auth",
                parent: None,
                scope = %scope,
                peer = %self.peer.ip().to_canonical(),
                client = %client,
                failures,
                lockout_secs = l.policy.lockout.as_secs(),
                listener = %listener,
                user = ?user,
                "authentication lockout"
            );
        }
        if !failure.delay.is_zero() {
            tokio::time::sleep(failure.delay).await;
        }
    }

    /// AUTH refused during a lockout: 454, no password checked.
    fn auth_locked(&mut self, scope: Scope, user: Option<&str>) -> Flow {
        self.metrics
            .auth_lockout_refusals_total
            .get_or_create(&SmtpMetrics::auth_scope(
                &self.cfg.listener_name,
                scope.as_str(),
            ))
            .inc();
        debug!(peer = %self.peer, user = ?user, scope = %scope, "AUTH refused: locked out");
        self.reject(reply::AUTH_LOCKED.response(), "auth_locked")
    }

    async fn sasl_plain(&mut self, initial: &str) -> Result<(String, String), AuthAbort> {
        let msg = match initial {
            // RFC 4954 §4: no initial response; ask for it.
            "" => self.sasl_step("").await?,
            // "=" is an empty initial response.
            "=" => Vec::new(),
            _ => auth::decode_b64(initial).map_err(AuthAbort::Sasl)?,
        };
        auth::parse_plain(&msg).map_err(AuthAbort::Sasl)
    }

    async fn sasl_login(&mut self, initial: &str) -> Result<(String, String), AuthAbort> {
        let user = match initial {
            "" => self.sasl_step("VXNlcm5hbWU6").await?, // "Username:"
            _ => auth::decode_b64(initial).map_err(AuthAbort::Sasl)?,
        };
        let user = auth::parse_login_field(user).map_err(AuthAbort::Sasl)?;
        let pass = self.sasl_step("UGFzc3dvcmQ6").await?; // "Password:"
        let pass = auth::parse_login_field(pass).map_err(AuthAbort::Sasl)?;
        Ok((user, pass))
    }

    /// Sends a `334` challenge and reads the client's base64 answer.
    async fn sasl_step(&mut self, challenge: &str) -> Result<Vec<u8>, AuthAbort> {
        self.conn
            .queue_raw(format!("334 {challenge}\r\n").as_bytes());
        if self.conn.flush().await.is_err() {
            return Err(AuthAbort::Close(None));
        }
        let read = self.conn.read_line(&mut self.line);
        match tokio::time::timeout(self.cfg.limits.command_timeout, read).await {
            Err(_) => Err(AuthAbort::Close(Some(reply::TIMEOUT))),
            Ok(Err(_)) | Ok(Ok(LineRead::Eof)) => Err(AuthAbort::Close(None)),
            Ok(Ok(LineRead::TooLong)) => Err(AuthAbort::TooLong),
            Ok(Ok(LineRead::Line)) => {
                let text = std::str::from_utf8(&self.line)
                    .map_err(|_| AuthAbort::Sasl(SaslError::BadBase64))?;
                auth::decode_b64(text).map_err(AuthAbort::Sasl)
            }
        }
    }
}
