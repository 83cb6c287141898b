//! The single writer thread and its group commit.
//!
//! Every write is a job sent over a bounded queue to one OS thread that
//! owns the only writing connection. The thread takes everything queued
//! (up to `max_batch`), runs it in one `BEGIN IMMEDIATE … COMMIT`, and only
//! then answers each job: N concurrent writers pay for one fsync, and no
//! caller hears `Ok` before the commit carrying its write succeeded.
//!
//! Each job runs inside its own SAVEPOINT, so one job's failure (a lease
//! lost, a blob conflict, a full disk on one insert) undoes only that job's
//! writes and the rest of the batch still commits. If SQLite rolls back the
//! whole transaction itself (it may on SQLITE_FULL, IOERR, NOMEM), the
//! failing job keeps its error and the others are run again in a fresh
//! transaction; they have not been answered, so nobody saw the lost state.
//!
//! Sync level: a batch of only non-durable jobs (creating a blob, appending
//! to it without finalizing) commits with `synchronous = NORMAL`, i.e. no
//! fsync. That is safe: NORMAL in WAL mode never corrupts, it may only lose
//! the latest commits on power loss, and the next FULL commit fsyncs the
//! whole log, covering every earlier frame. So a body streamed in 1600
//! appends costs no fsync until the append that finalizes it, and the
//! `create_transaction` that references it cannot be acknowledged before
//! all of it is on disk.
//!
//! Waiters ([`Store::wait_version`](crate::Store::wait_version)): a job
//! lists the transactions it changed, and once its commit has succeeded the
//! writer wakes their waiters, here, before answering the job. Here rather
//! than in the caller because a write whose caller stopped waiting still
//! commits, and its waiters must hear of it all the same.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::convert::{duplicate, sql_error};
use crate::watch::Watchers;
use crate::{StoreError, StoreResult, TxId};

/// Counters kept by the writer (for tests and metrics).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) durable_commits: AtomicU64,
    pub(super) jobs: AtomicU64,
    pub(super) largest_batch: AtomicU64,
}

/// One write, type-erased so a single queue carries every kind.
trait Job: Send {
    fn durable(&self) -> bool;
    /// Runs the operation on the open transaction and keeps the result;
    /// true if it succeeded. May run more than once (see module docs): it
    /// must not consume its inputs.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replaces a success (or a missing result) with `err`: the commit
    /// that would have carried it failed.
    fn fail(&mut self, err: &StoreError);
    /// The transactions the committed job changed (none if it failed).
    fn changed(&self) -> &[TxId];
    fn respond(self: Box<Self>);
}

struct TypedJob<T, F> {
    op: F,
    durable: bool,
    result: Option<StoreResult<T>>,
    /// Filled by the operation, cleared before each run.
    changed: Vec<TxId>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection, &mut Vec<TxId>) -> StoreResult<T> + Send + 'static,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, conn: &Connection) -> bool {
        // A panicking operation must not take the writer thread (and so
        // every later write) down with it: it fails alone, and its savepoint
        // is rolled back like any failed job's.
        self.changed.clear();
        let result = panic::catch_unwind(AssertUnwindSafe(|| (self.op)(conn, &mut self.changed)))
            .unwrap_or_else(|_| Err(StoreError::Internal("write operation panicked".into())));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, err: &StoreError) {
        if !matches!(self.result, Some(Err(_))) {
            self.result = Some(Err(duplicate(err)));
        }
    }

    fn changed(&self) -> &[TxId] {
        match self.result {
            Some(Ok(_)) => &self.changed,
            _ => &[],
        }
    }

    fn respond(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Internal(
                "write job finished without running".into(),
            ))
        });
        // The caller may have given up (its future dropped); the write
        // stands regardless, as documented on the store.
        let _ = self.reply.send(result);
    }
}

/// Handle on the writer thread. Dropping it closes the queue and waits
/// for the thread to finish what is queued and close the connection.
pub(super) struct Writer {
    // Declared before `_thread`, so it is dropped first: the thread exits
    // only once the queue is closed, and joining it before that would
    // wait forever.
    queue: mpsc::Sender<Box<dyn Job>>,
    _thread: Joined,
    pub(super) counters: Arc<Counters>,
}

/// Joins the writer thread when dropped. Without the join a process that
/// drops the store and exits could cut the thread off before its last
/// commit, or before closing the connection (which checkpoints the WAL
/// into the database and removes it). The thread needs no runtime (it
/// blocks on the queue and answers on oneshot channels), so dropping the
/// store on a tokio worker only blocks that worker for the last batch.
struct Joined(Option<thread::JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        let Some(handle) = self.0.take() else { return };
        // A job that held the last store reference would drop it here, on
        // the writer thread itself: joining would wait for itself.
        if handle.thread().id() == thread::current().id() {
            return;
        }
        if handle.join().is_err() {
            tracing::error!("the sqlite writer thread panicked");
        }
    }
}

impl Writer {
    pub(super) fn start(
        conn: Connection,
        queue_capacity: usize,
        max_batch: usize,
        watchers: Arc<Watchers>,
    ) -> Result<Self, StoreError> {
        let (queue, rx) = mpsc::channel(queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = thread::Builder::new()
            .name("koukan-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch.max(1), &thread_counters, &watchers))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            queue,
            _thread: Joined(Some(thread)),
            counters,
        })
    }

    /// Queues `op` and waits for the commit that carries it. With
    /// `durable`, that commit is fsynced before the answer.
    pub(super) async fn run<T, F>(&self, durable: bool, mut op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.run_changing(durable, move |conn, _| op(conn)).await
    }

    /// [`run`](Self::run) for an operation that writes transactions: it
    /// lists the ids it changed, whose waiters are woken once it is
    /// committed.
    pub(super) async fn run_changing<T, F>(&self, durable: bool, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Vec<TxId>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            op,
            durable,
            result: None,
            changed: Vec::new(),
            reply,
        });
        self.queue
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("sqlite writer thread has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("sqlite writer thread stopped before answering".into())
        })?
    }
}

fn writer_loop(
    conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
    counters: &Counters,
    watchers: &Watchers,
) {
    // The connection was opened with synchronous = FULL.
    let mut sync_full = true;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut durable_jobs: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    while queue.blocking_recv_many(&mut batch, max_batch) > 0 {
        // The batch's jobs were all pending at once, so any order is one
        // they could have run in: the non-durable ones (blob writes) go
        // first in a commit of their own without fsync and are answered
        // at once, instead of waiting for the durable ones' fsync.
        let mut i = 0;
        while i < batch.len() {
            if batch[i].durable() {
                durable_jobs.push(batch.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for (jobs, durable) in [(&mut batch, false), (&mut durable_jobs, true)] {
            if jobs.is_empty() {
                continue;
            }
            match set_sync(&conn, &mut sync_full, durable) {
                Ok(()) => run_batch(&conn, jobs, durable, counters),
                Err(e) => jobs.iter_mut().for_each(|j| j.fail(&e)),
            }
            for job in jobs.drain(..) {
                // Committed (or failed, and then it lists nothing): readers
                // see the write now, so the woken waiters' reads find it.
                for id in job.changed() {
                    watchers.notify(id);
                }
                job.respond();
            }
        }
    }
    // The queue is closed: the store is gone. The last connection to close
    // checkpoints the WAL into the database and deletes it.
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the sqlite writer connection failed");
    }
}

/// Switches `synchronous` between FULL and NORMAL when the batch needs it.
fn set_sync(conn: &Connection, sync_full: &mut bool, durable: bool) -> StoreResult<()> {
    if durable == *sync_full {
        return Ok(());
    }
    let level = if durable { "FULL" } else { "NORMAL" };
    match conn.execute_batch(&format!("PRAGMA synchronous = {level}")) {
        Ok(()) => {
            *sync_full = durable;
            Ok(())
        }
        // Staying on FULL is merely slower; failing to reach FULL would make
        // a durable write's `Ok` a lie, so that batch fails.
        Err(_) if !durable => Ok(()),
        Err(e) => Err(sql_error("set synchronous", e)),
    }
}

fn run_batch(conn: &Connection, jobs: &mut [Box<dyn Job>], durable: bool, counters: &Counters) {
    // Jobs whose failure made SQLite roll back the whole transaction: their
    // error stands and they are not run again. Each restart settles one
    // job, so this loop runs at most jobs.len() + 1 times.
    let mut settled = vec![false; jobs.len()];
    'attempt: loop {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = sql_error("begin", e);
            fail_unsettled(jobs, &settled, &err);
            return;
        }
        for i in 0..jobs.len() {
            if settled[i] {
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                abort(conn, jobs, &settled, sql_error("savepoint", e));
                return;
            }
            let ok = jobs[i].run(conn);
            if conn.is_autocommit() {
                // The transaction is gone, and with it the earlier jobs'
                // writes: run them again without the culprit.
                if ok {
                    jobs[i].fail(&StoreError::Internal(
                        "sqlite rolled back the transaction".into(),
                    ));
                }
                settled[i] = true;
                continue 'attempt;
            }
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                abort(conn, jobs, &settled, sql_error("end savepoint", e));
                return;
            }
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                if durable {
                    counters.durable_commits.fetch_add(1, Ordering::Relaxed);
                }
                counters
                    .jobs
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                counters
                    .largest_batch
                    .fetch_max(jobs.len() as u64, Ordering::Relaxed);
            }
            Err(e) => abort(conn, jobs, &settled, sql_error("commit", e)),
        }
        return;
    }
}

/// Rolls back the open transaction and fails every job that had not
/// failed on its own: none of their writes happened.
fn abort(conn: &Connection, jobs: &mut [Box<dyn Job>], settled: &[bool], err: StoreError) {
    if !conn.is_autocommit() {
        // If this fails too the connection is unusable; the next BEGIN will
        // report it to the next batch.
        let _ = conn.execute_batch("ROLLBACK");
    }
    fail_unsettled(jobs, settled, &err);
}

fn fail_unsettled(jobs: &mut [Box<dyn Job>], settled: &[bool], err: &StoreError) {
    for (job, settled) in jobs.iter_mut().zip(settled) {
        if !settled {
            job.fail(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use futures::future::join_all;

    use super::*;
    use crate::embedded::{EmbeddedOptions, schema};

    /// A writer on a fresh database with a scratch table `t`.
    fn writer(dir: &tempfile::TempDir, opts: &EmbeddedOptions) -> Arc<Writer> {
        let conn = schema::open_writer(&dir.path().join("w.db"), opts).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER NOT NULL, v BLOB)")
            .unwrap();
        Arc::new(Writer::start(conn, 1024, 256, Arc::default()).unwrap())
    }

    impl Writer {
        fn queued(&self) -> usize {
            self.queue.max_capacity() - self.queue.capacity()
        }
    }

    /// Occupies the writer thread until the returned sender is dropped or
    /// sent to; returns once the writer is inside the job, so that every
    /// job queued from then on waits for the next batch.
    async fn hold_writer(w: &Arc<Writer>) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (started_tx, started_rx) = std_mpsc::channel::<()>();
        let (release_tx, release_rx) = std_mpsc::channel::<()>();
        let w2 = w.clone();
        let held = tokio::spawn(async move {
            w2.run(false, move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
            .await
            .unwrap();
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        (release_tx, held)
    }

    async fn wait_queued(w: &Writer, n: usize) {
        while w.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    fn insert(k: i64, v: Vec<u8>) -> impl FnMut(&Connection) -> StoreResult<()> + Send + 'static {
        move |conn| {
            conn.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                rusqlite::params![k, v],
            )
            .map_err(|e| sql_error("insert", e))?;
            Ok(())
        }
    }

    fn keys(dir: &tempfile::TempDir) -> Vec<i64> {
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_one_fsynced_commit() {
        const N: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir, &EmbeddedOptions::default());
        let (release, held) = hold_writer(&w).await;
        let jobs: Vec<_> = (0..N)
            .map(|k| {
                let w = w.clone();
                tokio::spawn(async move { w.run(true, insert(k as i64, vec![])).await })
            })
            .collect();
        wait_queued(&w, N).await;
        release.send(()).unwrap();
        held.await.unwrap();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let c = &w.counters;
        // The holding job's batch, then all N in one.
        assert_eq!(c.commits.load(Ordering::Relaxed), 2);
        assert_eq!(c.durable_commits.load(Ordering::Relaxed), 1);
        assert_eq!(c.largest_batch.load(Ordering::Relaxed), N as u64);
        assert_eq!(keys(&dir).len(), N);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_job_undoes_only_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir, &EmbeddedOptions::default());
        let (release, held) = hold_writer(&w).await;
        let spawn = |f: Op| {
            let w = w.clone();
            tokio::spawn(async move { w.run(true, f).await })
        };
        let a = spawn(Box::new(insert(1, vec![])));
        wait_queued(&w, 1).await;
        let mut write_then_fail = insert(2, vec![]);
        let b = spawn(Box::new(move |conn| {
            write_then_fail(conn)?;
            Err(StoreError::LeaseLost(crate::TxId("t".into())))
        }));
        wait_queued(&w, 2).await;
        let c = spawn(Box::new(insert(3, vec![])));
        wait_queued(&w, 3).await;
        release.send(()).unwrap();
        held.await.unwrap();
        assert!(a.await.unwrap().is_ok());
        assert!(matches!(b.await.unwrap(), Err(StoreError::LeaseLost(_))));
        assert!(c.await.unwrap().is_ok());
        assert_eq!(keys(&dir), vec![1, 3]);
        assert_eq!(w.counters.commits.load(Ordering::Relaxed), 2);
    }

    /// SQLITE_FULL in the middle of a batch fails that job with `Full`; the
    /// jobs before and after it still commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_fails_only_the_job_that_hit_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EmbeddedOptions {
            max_size_bytes: Some(256 * 1024),
            ..EmbeddedOptions::default()
        };
        let w = writer(&dir, &opts);
        let (release, held) = hold_writer(&w).await;
        let mut jobs = Vec::new();
        for (i, (k, size)) in [(1, 100), (2, 1024 * 1024), (3, 100)]
            .into_iter()
            .enumerate()
        {
            let w2 = w.clone();
            jobs.push(tokio::spawn(async move {
                w2.run(true, insert(k, vec![0u8; size])).await
            }));
            wait_queued(&w, i + 1).await;
        }
        release.send(()).unwrap();
        held.await.unwrap();
        let results: Vec<_> = join_all(jobs)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(StoreError::Full(_))),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok(), "{:?}", results[2]);
        assert_eq!(keys(&dir), vec![1, 3]);
    }

    type Op = Box<dyn FnMut(&Connection) -> StoreResult<()> + Send>;
}
