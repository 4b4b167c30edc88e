//! Polls that are local, blocking work ([`Source::blocking_latest`], the `path` kind), run
//! one after another on a few blocking threads rather than one blocking task per source:
//! handing a task to a blocking thread and waking the async side again costs more than a
//! no-op poll of a small tree, and a pass may poll thousands of them.
//!
//! Each job still has its own time bound, counted from when a thread starts it: a job that
//! takes longer is reported as timed out and its thread is given up (it cannot be
//! interrupted; what it returns later is ignored), and a new thread takes over the jobs
//! that are left, so one hung file system delays only its own sources.
//!
//! [`Source::blocking_latest`]: crate::source::Source::blocking_latest

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::source::{BlockingPoll, VersionInfo};
use crate::Result;

/// At most this many threads run the jobs of one poll (fewer with fewer cores, or jobs).
const MAX_THREADS: usize = 8;

/// What became of one job.
pub(crate) enum Finished {
    /// It returned.
    Done(Result<VersionInfo>),
    /// It panicked, saying this.
    Panicked(String),
    /// It ran for longer than the bound.
    TimedOut,
}

struct State {
    queue: VecDeque<(usize, BlockingPoll)>,
    /// No more jobs come: a thread that finds the queue empty ends.
    closed: bool,
    /// Threads waiting for a job.
    waiting: usize,
    /// By job (in the order they were pushed): its outcome, once known.
    results: Vec<Option<Finished>>,
    /// Jobs without an outcome yet.
    left: usize,
    /// By thread: the job it runs and since when.
    running: Vec<Option<(usize, Instant)>>,
    /// By thread: given up (its job timed out); it takes no further job.
    given_up: Vec<bool>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or the queue is closed.
    more: Condvar,
    /// Signalled when the last outcome is in, after the queue was closed.
    all_done: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock, so a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many threads run up to `jobs` jobs.
fn threads_for(jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    cores.clamp(2, MAX_THREADS).min(jobs)
}

/// Jobs run on a few blocking threads as they are pushed ([`Batch::push`]), each within a
/// time bound; [`Batch::finish`] waits for their outcomes.
pub(crate) struct Batch {
    shared: Arc<Shared>,
    /// The caller's position of each job pushed.
    positions: Vec<usize>,
    /// How many threads to start, at most, before any job overran.
    threads: usize,
    started: usize,
    bound: Duration,
}

impl Batch {
    /// A batch of up to `expected` jobs (it only sizes the number of threads), each
    /// within `bound`.
    pub(crate) fn new(expected: usize, bound: Duration) -> Self {
        Batch {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    closed: false,
                    waiting: 0,
                    results: Vec::new(),
                    left: 0,
                    running: Vec::new(),
                    given_up: Vec::new(),
                }),
                more: Condvar::new(),
                all_done: tokio::sync::Notify::new(),
            }),
            positions: Vec::new(),
            threads: threads_for(expected).max(1),
            started: 0,
            bound,
        }
    }

    /// Queue `job` (at `position` in the caller's list); it may start at once. Must be
    /// called within a tokio runtime.
    pub(crate) fn push(&mut self, position: usize, job: BlockingPoll) {
        let wake = {
            let mut s = self.shared.lock();
            s.queue.push_back((self.positions.len(), job));
            s.results.push(None);
            s.left += 1;
            s.waiting > 0
        };
        self.positions.push(position);
        if wake {
            self.shared.more.notify_one();
        } else if self.started < self.threads {
            self.started += 1;
            start_thread(&self.shared);
        }
    }

    /// Wait for every job pushed; the outcomes come back in the order they were pushed,
    /// each with its position.
    pub(crate) async fn finish(mut self) -> Vec<(usize, Finished)> {
        if self.positions.is_empty() {
            return Vec::new();
        }
        self.close(false);
        let shared = Arc::clone(&self.shared);
        let bound = self.bound;
        loop {
            let deadline = {
                let s = shared.lock();
                if s.left == 0 {
                    break;
                }
                // The earliest bound of a running job; between jobs, look again soon.
                s.running
                    .iter()
                    .flatten()
                    .map(|(_, since)| *since + bound)
                    .min()
                    .unwrap_or_else(|| Instant::now() + bound.min(Duration::from_secs(1)))
            };
            let notified = shared.all_done.notified();
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_ok()
            {
                continue;
            }
            // Give up the threads whose job overran; new threads take over the queue.
            let now = Instant::now();
            let mut replace = 0;
            {
                let mut s = shared.lock();
                for t in 0..s.running.len() {
                    let Some((job, since)) = s.running[t] else {
                        continue;
                    };
                    if now < since + bound {
                        continue;
                    }
                    s.running[t] = None;
                    s.given_up[t] = true;
                    if s.results[job].is_none() {
                        s.results[job] = Some(Finished::TimedOut);
                        s.left -= 1;
                    }
                    replace += 1;
                }
                replace = replace.min(s.queue.len());
            }
            for _ in 0..replace {
                start_thread(&shared);
            }
        }
        let results = std::mem::take(&mut shared.lock().results);
        std::mem::take(&mut self.positions)
            .into_iter()
            .zip(results)
            .map(|(p, r)| (p, r.unwrap_or(Finished::TimedOut)))
            .collect()
    }
}

impl Batch {
    /// No more jobs come; with `drop_queued`, the jobs not started yet are dropped too.
    fn close(&self, drop_queued: bool) {
        let (wake, dropped) = {
            let mut s = self.shared.lock();
            s.closed = true;
            let dropped = if drop_queued {
                std::mem::take(&mut s.queue)
            } else {
                VecDeque::new()
            };
            (s.waiting > 0, dropped)
        };
        drop(dropped); // (outside the lock)
        if wake {
            self.shared.more.notify_all();
        }
    }
}

impl Drop for Batch {
    /// A batch dropped before [`Batch::finish`] returned (a pass cancelled, a panic) lets
    /// its threads go and starts no more jobs.
    fn drop(&mut self) {
        self.close(true);
    }
}

/// Start one more thread taking jobs from the queue.
fn start_thread(shared: &Arc<Shared>) {
    let t = {
        let mut s = shared.lock();
        s.running.push(None);
        s.given_up.push(false);
        s.running.len() - 1
    };
    let shared = Arc::clone(shared);
    // The handle is not needed: outcomes come back through `shared`.
    drop(tokio::task::spawn_blocking(move || work(&shared, t)));
}

fn work(shared: &Shared, t: usize) {
    let mut s = shared.lock();
    loop {
        if s.given_up[t] {
            return;
        }
        let Some((i, job)) = s.queue.pop_front() else {
            if s.closed {
                return;
            }
            s.waiting += 1;
            s = shared.more.wait(s).unwrap_or_else(|e| e.into_inner());
            s.waiting -= 1;
            continue;
        };
        s.running[t] = Some((i, Instant::now()));
        drop(s);
        let r = match catch_unwind(AssertUnwindSafe(job)) {
            Ok(r) => Finished::Done(r),
            Err(panic) => Finished::Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            ),
        };
        s = shared.lock();
        if s.given_up[t] {
            return; // timed out meanwhile: its outcome is already given
        }
        s.running[t] = None;
        if s.results[i].is_none() {
            s.results[i] = Some(r);
            s.left -= 1;
            if s.left == 0 && s.closed {
                shared.all_done.notify_one();
            }
        }
    }
}

/// Run `jobs` (each with its position in the caller's list) on a few blocking threads,
/// each within `bound`; the outcomes come back in the order of `jobs`.
#[cfg(test)]
async fn run(jobs: Vec<(usize, BlockingPoll)>, bound: Duration) -> Vec<(usize, Finished)> {
    let mut batch = Batch::new(jobs.len(), bound);
    for (p, job) in jobs {
        batch.push(p, job);
    }
    batch.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algo, Error, Version};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn version(i: usize) -> VersionInfo {
        VersionInfo::new(Version::from_bytes(Algo::Md5, &[i as u8; 16]).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_comes_back_in_order() {
        let jobs: Vec<(usize, BlockingPoll)> = (0..100)
            .map(|i| {
                let job: BlockingPoll = if i == 7 {
                    Box::new(|| Err(Error::Conflict("seven".to_owned())))
                } else if i == 9 {
                    Box::new(|| panic!("nine"))
                } else {
                    Box::new(move || Ok(version(i)))
                };
                (i * 2, job)
            })
            .collect();
        let out = run(jobs, Duration::from_secs(60)).await;
        assert_eq!(out.len(), 100);
        for (k, (p, f)) in out.into_iter().enumerate() {
            assert_eq!(p, k * 2);
            match (k, f) {
                (7, Finished::Done(Err(e))) => assert!(e.to_string().contains("seven"), "{e}"),
                (9, Finished::Panicked(what)) => assert_eq!(what, "nine"),
                (_, Finished::Done(Ok(v))) => assert_eq!(v, version(k)),
                _ => panic!("job {k}: unexpected outcome"),
            }
        }
    }

    /// Jobs that hang are reported as timed out, and the jobs queued behind them still
    /// run, on new threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_jobs_time_out_alone() {
        let released = Arc::new(AtomicBool::new(false));
        // As many hung jobs as threads at most: every first thread hangs.
        let mut jobs: Vec<(usize, BlockingPoll)> = Vec::new();
        for i in 0..MAX_THREADS {
            let released = Arc::clone(&released);
            jobs.push((
                i,
                Box::new(move || {
                    while !released.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(version(i))
                }),
            ));
        }
        for i in MAX_THREADS..MAX_THREADS + 40 {
            jobs.push((i, Box::new(move || Ok(version(i)))));
        }
        let out = run(jobs, Duration::from_secs(1)).await;
        released.store(true, Ordering::SeqCst);
        for (i, (p, f)) in out.into_iter().enumerate() {
            assert_eq!(p, i);
            match f {
                Finished::TimedOut => assert!(i < MAX_THREADS, "job {i} timed out"),
                Finished::Done(Ok(v)) => {
                    assert!(i >= MAX_THREADS, "job {i} did not hang");
                    assert_eq!(v, version(i));
                }
                _ => panic!("job {i}: unexpected outcome"),
            }
        }
    }

    /// A batch dropped before it finished (a cancelled pass) starts no more jobs: those
    /// still queued are dropped at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_batch_starts_no_more_jobs() {
        let released = Arc::new(AtomicBool::new(false));
        let token = Arc::new(());
        let mut batch = Batch::new(20, Duration::from_secs(60));
        for i in 0..20 {
            let released = Arc::clone(&released);
            let token = Arc::clone(&token);
            batch.push(
                i,
                Box::new(move || {
                    let _token = token;
                    while !released.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(version(i))
                }),
            );
        }
        drop(batch);
        // Only the jobs already started still hold the token.
        assert!(Arc::strong_count(&token) <= 1 + MAX_THREADS);
        released.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&token) > 1 {
            assert!(Instant::now() < give_up, "the started jobs never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
