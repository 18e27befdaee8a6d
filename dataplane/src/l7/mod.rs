//! The L7 core: a sans-IO HTTP/1.1 reverse proxy. Bytes, events and the time go in; actions come
//! out (see [`conn`]). No sockets, clocks or threads here: the transport (mio now, the dataplane's
//! own TCP later) does the I/O.
//!
//! By job: [`head`] (request heads and the smuggling checks), [`body`] (Content-Length and
//! chunked framing), [`response`] (backend response heads and their framing), [`headers`] (the
//! head sent on: hop-by-hop removal, X-Forwarded-*, Forwarded), [`errors`] (refusal reasons and
//! the short answers), [`route`] (the route table), [`filters`] (a route's redirect and request
//! header changes), [`select`] (backend choice), [`pool`] (idle backend connections, held by
//! the transport), [`conn`] (the connection state machine) and [`tls`] (rustls glue:
//! certificates by SNI, a session between transport and core, server or client side),
//! [`upstream`] (how backend connections are made: PROXY header, TLS) and [`proxy_proto`] (the
//! PROXY v2 header).
#![forbid(unsafe_code)]

pub mod body;
pub mod conn;
pub mod errors;
pub mod filters;
pub mod head;
pub mod headers;
pub mod pool;
pub mod proxy_proto;
pub mod response;
pub mod route;
pub mod select;
pub mod tls;
pub mod upstream;

pub use conn::{Action, Conn, ConnConfig, Ended, Routed, Router, Timeouts};
pub use errors::{RejectReason, Status};
pub use head::Limits;
pub use headers::ClientInfo;
pub use route::{BackendId, RouteTable, TableSpec};
pub use select::{Routing, SelectState};
