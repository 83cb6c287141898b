//! A terminal that delivers into a Maildir, so a sidecar can deliver
//! locally with no other server (the quickstart).
//!
//! Durability: the message is written to `tmp/`, fsynced, renamed into
//! `new/` and the directory fsynced before the 250 goes back, so a 250
//! means the message survives a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use koukan_chain::{Response, Terminal, TxUpdate, UpdateResponse};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildirConfig {
    pub path: PathBuf,
}

/// Creates `cur`, `new` and `tmp` under `path` if missing.
pub fn ensure_maildir(path: &Path) -> std::io::Result<()> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(path.join(sub))?;
    }
    Ok(())
}

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// `time.M<micros>P<pid>Q<n>.<host>` per the Maildir naming convention.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    let host = gethostname::gethostname()
        .to_string_lossy()
        .replace(['/', ':'], "_");
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        n,
        host
    )
}

struct Delivery {
    tmp_path: PathBuf,
    file: tokio::fs::File,
    name: String,
}

#[derive(Default)]
struct State {
    delivery: Option<Delivery>,
    accepted_rcpts: usize,
    /// Once the write failed, the rest of the body is discarded.
    failed: Option<Response>,
}

pub struct Maildir {
    config: Arc<MaildirConfig>,
    state: State,
}

impl Maildir {
    pub fn new(config: Arc<MaildirConfig>) -> Self {
        Self {
            config,
            state: State::default(),
        }
    }
}

fn write_failed(err: std::io::Error) -> Response {
    tracing::warn!(error = %err, "maildir write failed");
    if err.raw_os_error() == Some(28) {
        Response::new(452, "4.3.1 insufficient system storage")
    } else {
        Response::new(451, "4.3.0 local delivery failed")
    }
}

async fn append(
    config: &MaildirConfig,
    state: &mut State,
    data: &[u8],
    last: bool,
) -> Result<Option<Response>, std::io::Error> {
    if state.delivery.is_none() {
        let name = unique_name();
        let tmp_path = config.path.join("tmp").join(&name);
        // Created on first use (not at config load) so `check-config` has
        // no side effects and a deleted maildir heals itself.
        let file = match tokio::fs::File::create(&tmp_path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = config.path.clone();
                tokio::task::spawn_blocking(move || ensure_maildir(&path))
                    .await
                    .map_err(std::io::Error::other)??;
                tokio::fs::File::create(&tmp_path).await?
            }
            r => r?,
        };
        state.delivery = Some(Delivery {
            tmp_path,
            file,
            name,
        });
    }
    let Some(delivery) = state.delivery.as_mut() else {
        unreachable!("delivery was just created")
    };
    delivery.file.write_all(data).await?;
    if !last {
        return Ok(None);
    }
    let Some(mut delivery) = state.delivery.take() else {
        unreachable!()
    };
    delivery.file.flush().await?;
    delivery.file.sync_all().await?;
    let new_path = config.path.join("new").join(&delivery.name);
    tokio::fs::rename(&delivery.tmp_path, &new_path).await?;
    // The rename is only durable once the directory entry is on disk.
    tokio::fs::File::open(config.path.join("new"))
        .await?
        .sync_all()
        .await?;
    Ok(Some(Response::new(
        250,
        format!("2.0.0 delivered to maildir as {}", delivery.name),
    )))
}

impl Terminal for Maildir {
    fn update(&mut self, update: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let config = &self.config;
            let state = &mut self.state;
            let mut resp = UpdateResponse {
                mail: update
                    .mail_from
                    .as_ref()
                    .map(|_| Response::new(250, "2.1.0 sender ok")),
                rcpts: update
                    .rcpt_to
                    .iter()
                    .map(|_| Response::new(250, "2.1.5 recipient ok"))
                    .collect(),
                data: None,
            };
            state.accepted_rcpts += update.rcpt_to.len();
            if let Some(body) = update.body {
                if state.accepted_rcpts == 0 {
                    resp.data = Some(Response::new(554, "5.5.1 no valid recipients"));
                } else if let Some(failed) = &state.failed {
                    resp.data = body.last.then(|| failed.clone());
                } else {
                    match append(config, state, &body.data, body.last).await {
                        Ok(done) => resp.data = done,
                        Err(err) => {
                            let failed = write_failed(err);
                            if let Some(d) = state.delivery.take() {
                                let _ = tokio::fs::remove_file(&d.tmp_path).await;
                            }
                            state.failed = Some(failed.clone());
                            resp.data = Some(failed);
                        }
                    }
                }
            }
            resp
        })
    }
}

impl Drop for Maildir {
    fn drop(&mut self) {
        // An abandoned transaction (RSET, disconnect) leaves no file behind.
        if let Some(d) = self.state.delivery.take() {
            let _ = std::fs::remove_file(&d.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koukan_chain::{Mailbox, TerminalService};
    use tower::Service;

    #[tokio::test]
    async fn delivers_chunks_into_new_and_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        // Not created beforehand: the first delivery creates it.
        let cfg = Arc::new(MaildirConfig {
            path: dir.path().to_owned(),
        });
        let mut md = TerminalService::new(Maildir::new(cfg));
        let r = md
            .call(TxUpdate::mail(Mailbox::new("a@b.c")))
            .await
            .unwrap();
        assert_eq!(r.mail.unwrap().code, 250);
        let r = md
            .call(TxUpdate::rcpts([Mailbox::new("x@example.com")]))
            .await
            .unwrap();
        assert_eq!(r.rcpts[0].code, 250);
        let r = md
            .call(TxUpdate::body(&b"Subject: hi\r\n\r\n"[..], false))
            .await
            .unwrap();
        assert!(r.data.is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1
        );
        let r = md
            .call(TxUpdate::body(&b"body\r\n"[..], true))
            .await
            .unwrap();
        let data = r.data.unwrap();
        assert_eq!(data.code, 250, "{data}");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("new"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(
            std::fs::read(&files[0]).unwrap(),
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn abandoned_delivery_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        ensure_maildir(dir.path()).unwrap();
        let cfg = Arc::new(MaildirConfig {
            path: dir.path().to_owned(),
        });
        let mut md = TerminalService::new(Maildir::new(cfg));
        md.call(TxUpdate::rcpts([Mailbox::new("x@y.z")]))
            .await
            .unwrap();
        md.call(TxUpdate::body(&b"partial"[..], false))
            .await
            .unwrap();
        drop(md);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("new")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn write_error_is_a_temporary_failure() {
        let dir = tempfile::tempdir().unwrap();
        // The maildir path is a regular file: nothing can be created in it.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let cfg = Arc::new(MaildirConfig {
            path: dir.path().join("file"),
        });
        let mut md = TerminalService::new(Maildir::new(cfg));
        md.call(TxUpdate::rcpts([Mailbox::new("x@y.z")]))
            .await
            .unwrap();
        let r = md.call(TxUpdate::body(&b"x"[..], false)).await.unwrap();
        assert_eq!(r.data.as_ref().unwrap().code, 451);
        let r = md.call(TxUpdate::body(&b"y"[..], true)).await.unwrap();
        assert_eq!(r.data.unwrap().code, 451);
    }
}
