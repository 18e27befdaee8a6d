//! The packet path of the load balancer.
//!
//! Everything here that decides (parsing, Maglev selection, connection tracking, rewriting) is pure:
//! it takes bytes, a routing table and the time, and returns a verdict. Ports and workers (later) are
//! thin edges around [`pipeline::process`].
#![deny(unsafe_code)]

pub mod conntrack;
pub mod flow;
pub mod l7;
pub mod maglev;
pub mod neighbor;
pub mod net;
pub mod packet;
pub mod pipeline;
#[allow(unsafe_code)]
pub mod port;
pub mod steer;
pub mod table;
pub mod wire;
pub mod worker;

pub use packet::PacketBuf;
pub use pipeline::{process, process_parsed, DropReason, Verdict, WorkerState};
pub use table::RoutingTable;
