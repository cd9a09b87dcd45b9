//! Where log lines go: stderr, through a writer that never panics, never blocks, and so never
//! decides what is delivered.
//!
//! tracing-subscriber's fmt layer writes each formatted event with one `write_all` on its writer,
//! inside the task that logs. Writing to stderr directly would make every log call depend on
//! whoever reads the other end: a full pipe (a slow log shipper) blocks the task, and a closed one
//! (a log shipper or journald restarting, `| head`) makes the fmt layer report its own write error
//! with `eprintln!`, which panics on a closed stderr, in the middle of an action.
//!
//! So a log call only hands its line to a bounded queue ([`QUEUE_LINES`]) and returns. One thread
//! writes the queue to stderr and ignores its errors: a line that finds the queue full, or that
//! stderr refuses, is dropped and counted, and the count is written once stderr takes lines again.
//! [`LogGuard`] flushes what is queued when the process ends, for a bounded time.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting for stderr at most (about a megabyte of JSON lines).
pub const QUEUE_LINES: usize = 4096;

/// How long [`LogGuard`] waits for queued lines to reach stderr at exit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the writing thread is handed.
enum Message {
    /// One formatted log line (or several, as the fmt layer wrote them in one call).
    Line(Vec<u8>),
    /// Answer on the sender once every line queued before this one was written.
    Flush(SyncSender<()>),
}

/// The `MakeWriter` of the fmt layer: cheap to clone, one per subscriber.
#[derive(Clone)]
pub struct StderrQueue {
    /// Into the writing thread.
    sender: SyncSender<Message>,
    /// Lines dropped since the last report (queue full, or stderr refused them).
    dropped: Arc<AtomicU64>,
}

/// Flushes queued lines at exit (bounded by [`FLUSH_TIMEOUT`]); keep it alive until `main` returns.
#[must_use = "dropping the guard flushes the log queue: keep it until the process ends"]
pub struct LogGuard {
    /// Into the writing thread.
    sender: SyncSender<Message>,
}

impl StderrQueue {
    /// Starts the thread that writes to stderr.
    pub fn start() -> std::io::Result<(StderrQueue, LogGuard)> {
        Self::start_with(std::io::stderr())
    }

    /// Starts the writing thread over any output (tests pass a pipe).
    pub fn start_with(
        output: impl Write + Send + 'static,
    ) -> std::io::Result<(StderrQueue, LogGuard)> {
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("switchyard-log".into())
            .spawn(move || write_lines(receiver, output, &writer_dropped))?;
        Ok((
            StderrQueue {
                sender: sender.clone(),
                dropped,
            },
            LogGuard { sender },
        ))
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writing thread: every error is ignored (there is nowhere left to report it) but counted.
fn write_lines(receiver: Receiver<Message>, mut output: impl Write, dropped: &AtomicU64) {
    for message in receiver {
        match message {
            Message::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let note = format!(
                        "switchyard: {lost} log line(s) dropped: stderr was full or closed\n"
                    );
                    if output.write_all(note.as_bytes()).is_err() {
                        dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                }
                if output.write_all(&line).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::Flush(done) => {
                let _ = output.flush();
                let _ = done.try_send(());
            }
        }
    }
}

impl Write for StderrQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.sender.try_send(Message::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Always the whole buffer: a log line is either queued or counted, never an error that
        // the fmt layer would try to report.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StderrQueue {
    type Writer = StderrQueue;

    fn make_writer(&'a self) -> StderrQueue {
        self.clone()
    }
}

impl LogGuard {
    /// Waits (at most [`FLUSH_TIMEOUT`]) until the lines queued so far are written.
    pub fn flush(&self) {
        let (done, finished) = sync_channel(1);
        if self.sender.try_send(Message::Flush(done)).is_err() {
            return;
        }
        match finished.recv_timeout(FLUSH_TIMEOUT) {
            Ok(()) | Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use super::*;

    /// An output that never returns from its first write: a pipe nobody reads. It keeps what it
    /// was asked to write, so a test can read a drop report that got through before it stuck.
    struct Stuck(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut seen) = self.0.lock() {
                seen.extend_from_slice(buf);
            }
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_in_order() {
        let (reader_end, writer_end) = UnixStream::pair().unwrap();
        let (mut queue, guard) = StderrQueue::start_with(writer_end).unwrap();
        queue.write_all(b"one\n").unwrap();
        queue.write_all(b"two\n").unwrap();
        drop(guard);
        drop(queue);
        let mut text = String::new();
        (&reader_end).read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }

    #[test]
    fn a_closed_output_neither_fails_nor_panics_the_caller() {
        let (reader_end, writer_end) = UnixStream::pair().unwrap();
        drop(reader_end);
        let (mut queue, guard) = StderrQueue::start_with(writer_end).unwrap();
        for _ in 0..100 {
            queue.write_all(b"a line nobody reads\n").unwrap();
        }
        guard.flush();
        assert!(queue.dropped() >= 100, "dropped {}", queue.dropped());
    }

    #[test]
    fn a_stuck_output_never_blocks_the_caller() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut queue, guard) = StderrQueue::start_with(Stuck(seen.clone())).unwrap();
        let started = Instant::now();
        for _ in 0..QUEUE_LINES * 2 {
            queue.write_all(b"line\n").unwrap();
        }
        // The writing thread may have taken the count of lines dropped so far into a report (its
        // first write, which then sticks) before or after the caller finished: wait until it is
        // stuck, so that the count no longer moves, then count both.
        let stuck_by = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() && Instant::now() < stuck_by {
            std::thread::yield_now();
        }
        let seen = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        let reported: u64 = seen
            .strip_prefix("switchyard: ")
            .and_then(|rest| rest.split(' ').next())
            .map_or(0, |count| count.parse().unwrap());
        let dropped = queue.dropped() + reported;
        assert!(
            dropped >= QUEUE_LINES as u64 - 1,
            "dropped {dropped}, seen {seen:?}"
        );
        // The guard's flush is bounded too.
        drop(guard);
        assert!(started.elapsed() < FLUSH_TIMEOUT * 3);
    }
}
