//! The low-speed limit shared by the kinds that download over HTTP (`docker`, `http`,
//! `hockeyapp`, `s3`).

/// The slowest transfer a download accepts, in bytes a second over a whole
/// [`dtk_api::Context::network_timeout`].
pub(crate) const LOW_SPEED: u64 = 1024;

/// The low-speed limit: a server that trickles bytes passes every read timeout, so a
/// transfer is given up below [`LOW_SPEED`] bytes a second over a whole network timeout,
/// as git's `http.lowSpeedLimit` does.
pub(crate) struct LowSpeed {
    window: std::time::Duration,
    start: std::time::Instant,
    bytes: u64,
}

impl LowSpeed {
    pub(crate) fn new(network_timeout: std::time::Duration) -> Self {
        LowSpeed {
            window: network_timeout.max(std::time::Duration::from_secs(1)),
            start: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// `n` more bytes arrived; an error message when the last window was too slow.
    pub(crate) fn advance(&mut self, n: usize) -> std::result::Result<(), String> {
        self.bytes += n as u64;
        if self.start.elapsed() >= self.window {
            let floor = LOW_SPEED * self.window.as_secs();
            if self.bytes < floor {
                return Err(format!(
                    "too slow ({} bytes in {} s, below {LOW_SPEED} bytes/s); gave up",
                    self.bytes,
                    self.window.as_secs()
                ));
            }
            (self.start, self.bytes) = (std::time::Instant::now(), 0);
        }
        Ok(())
    }
}
