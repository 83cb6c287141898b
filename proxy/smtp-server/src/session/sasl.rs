//! AUTH PLAIN and LOGIN (RFC 4954) over the session's connection.

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Flow, Session};
use crate::auth::{self, SaslError};
use crate::conn::LineRead;
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
    /// password guessing per connection.
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
        // Argon2 is deliberately slow: keep it off the async workers.
        let checked_user = user.clone();
        let ok = tokio::task::spawn_blocking(move || secrets.verify(&checked_user, &password))
            .await
            .unwrap_or(false);
        if ok {
            debug!(peer = %self.peer, user = %user, "authenticated");
            self.auth_user = Some(user);
            self.reply(reply::AUTH_OK)
        } else {
            tracing::info!(peer = %self.peer, user = %user, listener = %self.cfg.listener_name, "authentication failed");
            self.reject(reply::AUTH_FAILED.response(), "auth")
        }
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
