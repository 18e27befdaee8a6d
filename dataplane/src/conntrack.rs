//! Per-worker connection tracking table.
//!
//! CONTRACT (skeleton, to be implemented; see the helper brief). The API below is what the pipeline uses.

use crate::flow::FlowKey;

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// Idle timeouts per state, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP flow that has not completed its handshake (SYN seen).
    pub tcp_syn: Millis,
    /// TCP flow with a completed handshake.
    pub tcp_established: Millis,
    /// TCP flow after a FIN or RST.
    pub tcp_closing: Millis,
    /// UDP flow (and ICMP echo).
    pub udp: Millis,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 5_000,
            tcp_established: 900_000,
            tcp_closing: 10_000,
            udp: 30_000,
        }
    }
}

/// Sizing and timeouts of one worker's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Slots (keys), rounded up to a power of two. A nat/fullnat flow takes two keys.
    pub capacity: usize,
    /// Most flows that may be embryonic (handshake not complete) at once.
    pub embryonic_budget: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

/// TCP connection state as far as a middlebox can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen from the client.
    SynSent,
    /// SYN+ACK seen from the backend.
    SynReceived,
    /// Handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, or a RST was seen.
    Closed,
}

/// State of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// A TCP flow.
    Tcp(TcpState),
    /// A UDP (or ICMP echo) flow; `replied` once the reply direction was seen.
    Udp {
        /// Reply direction seen.
        replied: bool,
    },
}

/// Which key of a flow a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client -> VIP direction (the key the flow was created with).
    Original,
    /// Backend -> balancer direction (nat and fullnat).
    Reply,
}

/// A lookup hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Slot of the key that matched (its value is the rewrite for this direction).
    pub slot: u32,
    /// Slot of the flow's original key (holds the state).
    pub flow: u32,
    /// Direction of the key that matched.
    pub dir: Dir,
}

/// Why an insert failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// No free, expired or evictable slot in the key's probe window.
    #[error("conntrack full")]
    Full,
    /// The embryonic budget is used up and no embryonic flow could be evicted.
    #[error("embryonic budget exhausted")]
    EmbryonicBudget,
    /// A live entry already holds one of the keys.
    #[error("key already tracked")]
    Exists,
}
