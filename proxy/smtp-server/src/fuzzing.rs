//! A socket-free harness that runs a whole session on bytes from a client,
//! for the `smtp_session` fuzz target (`fuzz/`) and for the unit tests that
//! keep the harness itself working.
//!
//! The session is the real one ([`serve_connection`] over an in-memory
//! duplex pipe); its chain is a trivial service answering 250 to
//! everything, so the fuzzer explores the protocol state machine, the line
//! reader, DATA/BDAT streaming and SASL decoding.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use koukan_chain::{BoxTxService, Ingress, Response, TxContext, TxUpdate, UpdateResponse, boxed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::auth::{Secrets, hash_secret_with_params};
use crate::auth_limit::{AuthFailureLimits, AuthFailurePolicy, AuthFailureTracker};
use crate::config::{Limits, SessionConfig};
use crate::metrics::SmtpMetrics;
use crate::session::serve_connection;
use koukan_chain::TransactionFactory;

/// User and password the harness accepts (AUTH is reachable in clear
/// because the fake peer is loopback and the opt-out is on).
pub const USER: &str = "fuzz";
pub const PASSWORD: &str = "fuzz";

/// A chain that accepts everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl tower::Service<TxUpdate> for AcceptAll {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = Ready<Result<UpdateResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, update: TxUpdate) -> Self::Future {
        let mut resp = UpdateResponse::fill(&update, &Response::new(250, "2.0.0 ok"));
        if resp.data.is_some() {
            resp.data = Some(Response::new(250, "2.0.0 queued"));
        }
        ready(Ok(resp))
    }
}

/// Factory of [`AcceptAll`] chains.
#[derive(Debug, Default)]
pub struct AcceptAllFactory;

impl TransactionFactory for AcceptAllFactory {
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService) {
        let ctx = TxContext::new("fuzz", ingress, "", "");
        (Arc::new(ctx), boxed(AcceptAll))
    }
}

fn secrets() -> Arc<Secrets> {
    static SECRETS: OnceLock<Arc<Secrets>> = OnceLock::new();
    SECRETS
        .get_or_init(|| {
            // Cheap Argon2 parameters: the harness must stay fast.
            let params = argon2::Params::new(64, 1, 1, None).expect("valid params");
            let users =
                HashMap::from([(USER.to_owned(), hash_secret_with_params(PASSWORD, params))]);
            Arc::new(Secrets::from_map(users).expect("valid hash"))
        })
        .clone()
}

/// The harness's session config: small limits so they are reachable from
/// short inputs.
pub fn config() -> SessionConfig {
    SessionConfig {
        listener_name: "fuzz".to_owned(),
        hostname: "fuzz.example".to_owned(),
        tls: None,
        implicit_tls: false,
        auth: Some(secrets()),
        auth_allow_plaintext_loopback: true,
        require_auth: false,
        // Reachable from short inputs, and no delay: the fuzzer must stay
        // fast. A fresh tracker per session keeps runs independent.
        auth_failures: Some(AuthFailureLimits {
            policy: AuthFailurePolicy {
                max_failures_per_address: 3,
                max_failures_per_user: 3,
                delay: Duration::ZERO,
                max_delay: Duration::ZERO,
                ..AuthFailurePolicy::default()
            },
            tracker: Arc::new(AuthFailureTracker::new()),
        }),
        limits: Limits {
            max_message_size: 256 * 1024,
            max_recipients: 20,
            max_line_length: 512,
            max_data_line_length: 1000,
            max_bad_commands: 100,
            max_connections: 1,
            command_timeout: Duration::from_secs(10),
            data_block_timeout: Duration::from_secs(10),
            data_end_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
        },
    }
}

/// Feeds `input` as everything a client sends (then end of stream) and
/// returns everything the server wrote.
pub async fn run_session_async(input: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let local: SocketAddr = ([127, 0, 0, 1], 25).into();
    let session = serve_connection(
        server,
        peer,
        local,
        Arc::new(config()),
        Arc::new(AcceptAllFactory),
        shutdown,
        Arc::new(SmtpMetrics::new()),
    );
    let (mut rd, mut wr) = tokio::io::split(client);
    // The session may close before taking all input (QUIT, too many
    // errors): write errors are expected then.
    let write = async {
        let _ = wr.write_all(input).await;
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let ((), (), out) = tokio::join!(session, write, read);
    out
}

/// [`run_session_async`] on a fresh single-threaded runtime (what the fuzz
/// target calls).
pub fn run_session(input: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run_session_async(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: &[u8]) -> String {
        String::from_utf8(run_session(input)).expect("replies are UTF-8")
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines().map(|l| &l[..l.len().min(3)]).collect()
    }

    #[test]
    fn nasty_inputs_never_break_the_session() {
        let mut long = b"EHLO x\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'A', 100_000));
        long.extend_from_slice(b"\r\nNOOP\r\n");
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\0\0\0\r\n\0".to_vec(),
            vec![0xff; 5000],
            long,
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nno end".to_vec(),
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 99999999999\r\nabc".to_vec(),
            b"EHLO x\r\nAUTH PLAIN\r\n!!!\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN =\r\n".to_vec(),
            b"BDAT 5\r\nQUIT\r\nQUIT\r\n".to_vec(),
            b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<\xc3\xa9@b>\r\n\r\n\n\r\r\n".to_vec(),
            (0..=255u8).cycle().take(20_000).collect(),
        ];
        for input in inputs {
            let out = run_session(&input);
            assert!(out.starts_with(b"220 fuzz.example ESMTP koukan\r\n"));
            assert!(
                out.ends_with(b"\r\n"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    /// A small built-in fuzzer for CI (no nightly needed): random mixes of
    /// valid commands, data and junk from a fixed seed.
    #[test]
    fn random_command_soup() {
        use rand::{Rng, SeedableRng};
        const PIECES: &[&[u8]] = &[
            b"EHLO a\r\n",
            b"HELO b\r\n",
            b"MAIL FROM:<a@b>\r\n",
            b"MAIL FROM:<a@b> SIZE=999999999 BODY=8BITMIME SMTPUTF8\r\n",
            b"RCPT TO:<c@d>\r\n",
            b"RCPT TO:<\xc3\xa9@d>\r\n",
            b"DATA\r\n",
            b"..dot\r\n",
            b"\r\n.\r\n",
            b"BDAT 3\r\nabc",
            b"BDAT 0 LAST\r\n",
            b"BDAT 10 LAST\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"AUTH PLAIN\r\n",
            b"AUTH LOGIN\r\n",
            b"AGZ1enoAZnV6eg==\r\n",
            b"*\r\n",
            b"STARTTLS\r\n",
            b"\0\xff\xfe",
            b"\n",
            b"\r",
            b".",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b6f756b616e);
        for _ in 0..300 {
            let mut input = Vec::new();
            for _ in 0..rng.random_range(0..40) {
                input.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
            }
            let out = run_session(&input);
            assert!(out.starts_with(b"220 "));
            assert!(
                out.ends_with(b"\r\n"),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn harness_runs_a_full_transaction() {
        let out = text(
            b"EHLO c\r\nAUTH PLAIN AGZ1enoAZnV6eg==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n..x\r\n.\r\nQUIT\r\n",
        );
        let c = codes(&out);
        assert_eq!(c.last(), Some(&"221"), "{out}");
        assert!(out.contains("235 2.7.0"), "{out}");
        assert!(out.contains("354 "), "{out}");
        assert!(out.contains("250 2.0.0 queued"), "{out}");
    }

    #[test]
    fn harness_reports_bad_bytes_and_long_lines() {
        let mut input = b"NO\0OP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\r\nFOO\r\nQUIT\r\n");
        let out = text(&input);
        assert_eq!(
            out,
            "220 fuzz.example ESMTP koukan\r\n\
             500 5.5.2 invalid characters in command\r\n\
             500 5.5.2 line too long\r\n\
             500 5.5.2 command not recognized\r\n\
             221 2.0.0 bye\r\n"
        );
    }
}
