//! An in-memory port for tests: frames are pushed in and transmitted frames collected.

use std::collections::VecDeque;

use super::{Port, PortStats, HEADROOM, MAX_BURST, UNSET};

/// Size of one frame's buffer: headroom, the largest frame, some tailroom.
const SLOT: usize = HEADROOM + 9216 + 64;
use crate::packet::PacketBuf;
use crate::pipeline::Verdict;

/// Frames queued for reception and frames transmitted, in memory.
#[derive(Debug, Default)]
pub struct MemPort {
    /// Frames the next `rx_burst` calls will receive.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames transmitted, in order.
    pub tx: Vec<Vec<u8>>,
    /// Frames handed to the host.
    pub host: Vec<Vec<u8>>,
    stats: PortStats,
    buf: Vec<u8>,
    /// Buffers of [`Port::rx_batch`]'s bursts, `SLOT` bytes per frame.
    burst: Vec<u8>,
}

impl MemPort {
    /// An empty port.
    pub fn new() -> MemPort {
        MemPort {
            buf: vec![0; SLOT],
            ..MemPort::default()
        }
    }
}

impl Port for MemPort {
    fn name(&self) -> String {
        "mem".into()
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.rx.pop_front() else {
                break;
            };
            n += 1;
            self.stats.rx += 1;
            let len = frame.len().min(self.buf.len() - HEADROOM);
            self.buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
            let mut pkt = PacketBuf::new(&mut self.buf, HEADROOM, len);
            let v = f(&mut pkt);
            settle(
                &mut self.stats,
                (&mut self.tx, &mut self.host),
                pkt.data(),
                v,
            );
        }
        Ok(n)
    }

    fn rx_batch(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut [PacketBuf<'_>], &mut [Verdict]),
    ) -> std::io::Result<usize> {
        let n = max.min(MAX_BURST).min(self.rx.len());
        if n == 0 {
            return Ok(0);
        }
        // One buffer per frame of the burst, so the pipeline sees the whole burst at once.
        let want = n * SLOT;
        if self.burst.len() < want {
            self.burst.resize(want, 0);
        }
        let mut lens = [0usize; MAX_BURST];
        for (i, len) in lens.iter_mut().take(n).enumerate() {
            let frame = self.rx.pop_front().unwrap_or_default();
            *len = frame.len().min(SLOT - HEADROOM);
            let start = i * SLOT + HEADROOM;
            self.burst[start..start + *len].copy_from_slice(&frame[..*len]);
        }
        self.stats.rx += n as u64;
        let mut pkts: Vec<PacketBuf<'_>> = self.burst[..want]
            .chunks_mut(SLOT)
            .zip(lens)
            .map(|(b, len)| PacketBuf::new(b, HEADROOM, len))
            .collect();
        let mut verdicts = [UNSET; MAX_BURST];
        f(&mut pkts, &mut verdicts[..n]);
        for (pkt, v) in pkts.iter().zip(verdicts) {
            settle(
                &mut self.stats,
                (&mut self.tx, &mut self.host),
                pkt.data(),
                v,
            );
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn tx_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.stats.tx += 1;
        self.tx.push(frame.to_vec());
        Ok(())
    }
}

/// Settles a frame by the pipeline's verdict `v`: `Tx` and `ToHost` frames are kept (in
/// `tx` and `host`) and counted; dropped ones are not.
fn settle(
    stats: &mut PortStats,
    (tx, host): (&mut Vec<Vec<u8>>, &mut Vec<Vec<u8>>),
    data: &[u8],
    v: Verdict,
) {
    match v {
        Verdict::Tx => {
            stats.tx += 1;
            tx.push(data.to_vec());
        }
        Verdict::ToHost => {
            stats.to_host += 1;
            host.push(data.to_vec());
        }
        Verdict::Drop(_) | Verdict::ToL7 | Verdict::Lent => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_their_verdicts() {
        let mut p = MemPort::new();
        p.rx.extend([vec![1u8; 60], vec![2u8; 60], vec![3u8; 60]]);
        let mut seen = 0;
        let n = p
            .rx_burst(2, &mut |pkt| {
                seen += 1;
                match pkt.data()[0] {
                    1 => {
                        pkt.data_mut()[0] = 9;
                        Verdict::Tx
                    }
                    _ => Verdict::ToHost,
                }
            })
            .unwrap();
        assert_eq!((n, seen), (2, 2));
        assert_eq!(
            p.tx,
            vec![{
                let mut f = vec![1u8; 60];
                f[0] = 9;
                f
            }]
        );
        assert_eq!(p.host.len(), 1);
        assert_eq!(p.rx.len(), 1);
        assert_eq!(p.stats().rx, 2);
    }
}
