//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test crate uses a different part

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use dataplane::port::mem::MemPort;
use dataplane::port::{Port, PortStats};
use dataplane::{PacketBuf, Verdict};

/// A `MemPort` the test can feed and read while a worker thread owns the port, with a wait fd
/// that becomes readable when the test pushes frames (as a real port's would).
#[derive(Clone)]
pub struct SharedPort {
    mem: Arc<Mutex<MemPort>>,
    bell: Arc<(UnixStream, UnixStream)>,
}

impl SharedPort {
    /// An empty port.
    pub fn new() -> SharedPort {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        SharedPort {
            mem: Arc::new(Mutex::new(MemPort::new())),
            bell: Arc::new((a, b)),
        }
    }

    /// Queues frames for the worker to receive and rings its wait fd.
    pub fn push(&self, frames: impl IntoIterator<Item = Vec<u8>>) {
        self.mem.lock().unwrap().rx.extend(frames);
        let _ = (&self.bell.0).write(&[1]);
    }

    /// The frames transmitted since the last call.
    pub fn take_tx(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.mem.lock().unwrap().tx)
    }
}

impl Port for SharedPort {
    fn name(&self) -> String {
        "shared-mem".into()
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> std::io::Result<usize> {
        let mut sink = [0u8; 64];
        while matches!((&self.bell.1).read(&mut sink), Ok(n) if n > 0) {}
        self.mem.lock().unwrap().rx_burst(max, f)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.bell.1.as_raw_fd())
    }

    fn stats(&self) -> PortStats {
        self.mem.lock().unwrap().stats()
    }

    fn tx_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.mem.lock().unwrap().tx_frame(frame)
    }
}
