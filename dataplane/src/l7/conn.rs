//! The per-connection state machine: client bytes, backend bytes, events and `now` in; actions
//! out. No sockets, clocks or threads: a transport (the mio loop, later the dataplane's own TCP)
//! reads and writes, keeps one timer per connection and the backend pool.
//!
//! How a transport drives it:
//! - Feed what it read with [`Conn::client_data`] / [`Conn::backend_data`] (one copy into the
//!   connection's own input buffers, reused for its whole life), and report
//!   [`Conn::backend_connected`], [`Conn::backend_failed`], [`Conn::backend_closed`],
//!   [`Conn::client_closed`] and [`Conn::timer`].
//! - After every call, run the actions it pushed: [`Action::Connect`] (take a pooled connection
//!   to that backend or open one), [`Action::WriteClient`] / [`Action::WriteBackend`] (write
//!   [`Conn::client_output`] / [`Conn::backend_output`], then report [`Conn::client_written`] /
//!   [`Conn::backend_written`]), [`Action::ReleaseBackend`] (back to the pool),
//!   [`Action::CloseBackend`], [`Action::CloseClient`] (after the client output is written) and
//!   [`Action::ArmTimer`] (one timer: a new one replaces the old); [`Action::Refused`] only
//!   reports why a request was refused, and [`Action::RequestStarted`],
//!   [`Action::ResponseStarted`] and [`Action::RequestEnded`] mark a request's life (metrics:
//!   latency, requests by route, backend and status).
//! - Read from the client only while [`Conn::wants_client_data`], from the backend only while
//!   [`Conn::wants_backend_data`]: that bounds every buffer.
//!
//! One request is in flight at a time; pipelined requests wait in the input buffer and are
//! answered in order. Bodies stream: each piece is checked by the body decoder and passed on.

use super::body::BodyReader;
use super::errors::{RejectReason, Status};
use super::filters::{HeaderRewrite, RedirectFrom, RedirectRule};
use super::head::{parse_request, Framing, HeadScan, Limits, Method, RequestHead, Version};
use super::headers::{write_request_head, ClientInfo};
use super::response::{parse_response, write_response_head, ResponseHead, ResponseOut};
use super::route::{BackendId, Pick, RequestView, SetCookie};
use crate::conntrack::Millis;

/// What the transport does next for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Get a connection to this backend (from the pool or new); report the outcome with
    /// `backend_connected` or `backend_failed`.
    Connect(BackendId),
    /// `client_output()` has bytes to write.
    WriteClient,
    /// `backend_output()` has bytes to write.
    WriteBackend,
    /// The backend connection is idle and reusable: give it back to the pool.
    ReleaseBackend,
    /// Close the backend connection (never reuse it).
    CloseBackend,
    /// Close the client connection once its output is written.
    CloseClient,
    /// Call `timer` at this time (replaces any earlier timer of this connection).
    ArmTimer(Millis),
    /// A request was refused for this reason (for metrics; the answer is already queued).
    Refused(RejectReason),
    /// A request's head was read (or its refusal decided): its clock starts (for metrics).
    RequestStarted,
    /// The current request's response head (or local answer) was queued (for metrics).
    ResponseStarted,
    /// The current request is over: its response was queued whole, or cut (for metrics). A
    /// request that ends before any answer reports nothing.
    RequestEnded(Ended),
}

/// How a request ended, for a transport's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The split of the route it matched ([`Pick::split`]); `None`: no backend was picked (a
    /// refusal, 404, or a route with nothing usable).
    pub split: Option<u32>,
    /// The backend last tried (the one that answered, or whose failure gave a 502 or 504).
    pub backend: Option<BackendId>,
    /// The status the client got (101 for an upgrade: the tunnel after it is not a request).
    pub status: u16,
    /// [`Router::metrics_key`] of `split` and `backend`; 0 when none was picked.
    pub key: u32,
}

impl Ended {
    /// The status class as an index: 0 for 1xx .. 4 for 5xx.
    pub fn class(&self) -> usize {
        status_class(self.status)
    }
}

/// A status's class as an index: 0 for 1xx .. 4 for 5xx (anything else clamped into them).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Timeouts in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request to the end of its head: 408 after.
    pub header_read: Millis,
    /// A keep-alive client connection with no request.
    pub idle: Millis,
    /// Connecting to a backend: another backend or 504 after.
    pub connect: Millis,
    /// From the head of a request to the end of its response: 504 (or a cut) after.
    pub total: Millis,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: 10_000,
            idle: 60_000,
            connect: 3_000,
            total: 60_000,
        }
    }
}

/// What a route does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed<'t> {
    /// Send it to this backend, its head changed by the route's rewrite (if any); the answer
    /// sets this cookie (a sticky session's first request, or one whose endpoint left).
    Send(Pick, Option<&'t HeaderRewrite>, Option<SetCookie<'t>>),
    /// Answer this redirect.
    Redirect(&'t RedirectRule),
    /// Answer this status (404, 500, 503).
    Answer(Status),
}

/// Routes a request and picks backends: the route table with its selection state, or a fake in
/// tests.
pub trait Router {
    /// The backend for a request, or the status to answer instead (404, 500, 503).
    fn route(&mut self, request: &RequestView<'_>) -> Result<Pick, Status>;
    /// What the connection asks: [`Self::route`] with the route's filters. The default knows no
    /// filters (a router without any, like a test's fake).
    fn route_request(&mut self, request: &RequestView<'_>) -> Routed<'_> {
        match self.route(request) {
            Ok(pick) => Routed::Send(pick, None, None),
            Err(status) => Routed::Answer(status),
        }
    }
    /// Another backend of the same route, other than `pick.backend`, for the one retry.
    fn retry(&mut self, pick: &Pick) -> Option<Pick>;
    /// The request sent to `pick` is over (least-outstanding-requests bookkeeping).
    fn finished(&mut self, pick: &Pick);
    /// The transport's tag for requests on route `split` to `backend`, carried in
    /// [`Ended::key`]: asked when a request ends, before a later request may route on a newer
    /// table, so a transport can name what the indexes mean now. 0 (the default) means none.
    fn metrics_key(&mut self, split: u32, backend: BackendId) -> u32 {
        let _ = (split, backend);
        0
    }
}

/// Settings of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    /// Size limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Read no more from a side while this many bytes wait to be passed on.
    pub buffer: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            buffer: 64 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being forwarded and its response relayed.
    Exchange,
    /// After 101: bytes pass both ways unchanged.
    Tunnel,
    /// Finished: the client is being closed.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    None,
    Connecting,
    Ready,
}

/// One client connection and the backend connection serving its current request.
#[derive(Debug)]
pub struct Conn {
    config: ConnConfig,
    client: ClientInfo,
    cin: Vec<u8>,
    bin: Vec<u8>,
    cout: Vec<u8>,
    bout: Vec<u8>,
    scan: HeadScan,
    req: RequestHead,
    resp: ResponseHead,
    /// The head sent to the backend, kept for the one retry of a bodiless request.
    sent_head: Vec<u8>,
    /// The `set-cookie` line the current request's answer carries (a sticky session's), or
    /// empty.
    set_cookie: Vec<u8>,
    req_body: BodyReader,
    resp_body: BodyReader,
    phase: Phase,
    backend: Backend,
    pick: Option<Pick>,
    retried: bool,
    /// Any byte of the current request reached a backend connection.
    sent: bool,
    /// Any byte of the current response reached the client.
    answered: bool,
    /// The response head is read; its body is being relayed.
    in_body: bool,
    dechunk: bool,
    close_after: bool,
    /// The client closed its side: no more requests will come.
    client_eof: bool,
    header_deadline: Option<Millis>,
    idle_deadline: Option<Millis>,
    connect_deadline: Option<Millis>,
    total_deadline: Option<Millis>,
    armed: Option<Millis>,
    /// Answers given to the client, by status class (1xx..5xx; 101 counts, interim 1xx not).
    answers: [u64; 5],
    /// A request started (`RequestStarted` sent) and has not ended.
    in_request: bool,
    /// The current request's answer status (0: none yet).
    status: u16,
    /// The current request's route split and backend, for `RequestEnded`.
    served_by: Option<(u32, BackendId)>,
}

impl Conn {
    /// A new client connection accepted at `now`.
    pub fn new(
        config: ConnConfig,
        client: ClientInfo,
        now: Millis,
        actions: &mut Vec<Action>,
    ) -> Conn {
        let mut conn = Conn {
            config,
            client,
            cin: Vec::new(),
            bin: Vec::new(),
            cout: Vec::new(),
            bout: Vec::new(),
            scan: HeadScan::default(),
            req: RequestHead::default(),
            resp: ResponseHead::default(),
            sent_head: Vec::new(),
            set_cookie: Vec::new(),
            req_body: BodyReader::Done,
            resp_body: BodyReader::Done,
            phase: Phase::Head,
            backend: Backend::None,
            pick: None,
            retried: false,
            sent: false,
            answered: false,
            in_body: false,
            dechunk: false,
            close_after: false,
            client_eof: false,
            header_deadline: None,
            idle_deadline: Some(now + config.timeouts.idle),
            connect_deadline: None,
            total_deadline: None,
            armed: None,
            answers: [0; 5],
            in_request: false,
            status: 0,
            served_by: None,
        };
        conn.rearm(actions);
        conn
    }

    /// Bytes waiting to be written to the client.
    pub fn client_output(&self) -> &[u8] {
        &self.cout
    }

    /// Bytes waiting to be written to the backend.
    pub fn backend_output(&self) -> &[u8] {
        &self.bout
    }

    /// True while the client may send more (input and output to the backend are under the limit).
    pub fn wants_client_data(&self) -> bool {
        self.phase != Phase::Closed
            && !self.client_eof
            && self.cin.len() < self.config.buffer.max(self.config.limits.max_head)
            && self.bout.len() < self.config.buffer
    }

    /// True while the backend may send more.
    pub fn wants_backend_data(&self) -> bool {
        self.backend == Backend::Ready
            && self.bin.len() < self.config.buffer.max(self.config.limits.max_head)
            && self.cout.len() < self.config.buffer
    }

    /// Bytes held in the connection's buffers (input and output, both sides): bounded by the
    /// limits when the transport follows `wants_*_data`.
    pub fn buffered(&self) -> usize {
        self.cin.len() + self.bin.len() + self.cout.len() + self.bout.len() + self.sent_head.len()
    }

    /// The connection is finished (after `CloseClient`).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Bytes read from the client.
    pub fn client_data<R: Router>(
        &mut self,
        now: Millis,
        data: &[u8],
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        self.cin.extend_from_slice(data);
        self.pump(now, router, actions);
    }

    /// Bytes read from the backend.
    pub fn backend_data<R: Router>(
        &mut self,
        now: Millis,
        data: &[u8],
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if self.phase == Phase::Closed || self.backend != Backend::Ready {
            return;
        }
        self.bin.extend_from_slice(data);
        self.pump(now, router, actions);
    }

    /// `n` bytes of `client_output()` were written.
    pub fn client_written<R: Router>(
        &mut self,
        now: Millis,
        n: usize,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        self.cout.drain(..n.min(self.cout.len()));
        self.pump(now, router, actions);
    }

    /// `n` bytes of `backend_output()` were written.
    pub fn backend_written<R: Router>(
        &mut self,
        now: Millis,
        n: usize,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        self.bout.drain(..n.min(self.bout.len()));
        self.pump(now, router, actions);
    }

    /// The connection asked for with `Connect` is ready.
    pub fn backend_connected<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if self.backend != Backend::Connecting {
            return;
        }
        self.backend = Backend::Ready;
        self.connect_deadline = None;
        self.bout.extend_from_slice(&self.sent_head);
        self.sent = true;
        self.pump(now, router, actions);
    }

    /// The connection asked for with `Connect` could not be made.
    pub fn backend_failed<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if self.backend != Backend::Connecting {
            return;
        }
        self.backend = Backend::None;
        self.connect_deadline = None;
        // Nothing was sent: another backend may always be tried once.
        if !self.try_again(now, router, actions) {
            self.fail(Status::BadGateway, router, actions);
        }
        self.rearm(actions);
    }

    /// The backend closed its side.
    pub fn backend_closed<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        if self.backend == Backend::None {
            return;
        }
        match self.phase {
            Phase::Tunnel => self.close_all(router, actions),
            Phase::Exchange if self.in_body && self.resp_body == BodyReader::UntilClose => {
                // Close-delimited body: the end of the connection is the end of the body.
                self.backend = Backend::None;
                self.resp_body = BodyReader::Done;
                actions.push(Action::CloseBackend);
                self.finish_exchange(now, router, actions);
            }
            Phase::Exchange if !self.answered => {
                self.backend = Backend::None;
                actions.push(Action::CloseBackend);
                let replayable =
                    self.req.method.is_idempotent() && self.req.framing == Framing::None;
                if !(replayable && self.try_again(now, router, actions)) {
                    self.fail(Status::BadGateway, router, actions);
                }
            }
            _ => self.close_all(router, actions),
        }
        self.rearm(actions);
    }

    /// The client closed its side. Requests it sent whole are still answered (then the
    /// connection closes); one cut short, or a tunnel, ends at once.
    pub fn client_closed<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        self.client_eof = true;
        match self.phase {
            Phase::Closed => {}
            Phase::Head => self.pump(now, router, actions),
            // The answer goes out; the next head is then found missing and the connection ends.
            Phase::Exchange if self.req_body.is_done() => self.pump(now, router, actions),
            Phase::Exchange | Phase::Tunnel => self.close_all(router, actions),
        }
    }

    /// The armed timer fired.
    pub fn timer<R: Router>(&mut self, now: Millis, router: &mut R, actions: &mut Vec<Action>) {
        self.armed = None;
        let due = |d: Option<Millis>| d.is_some_and(|d| d <= now);
        if self.phase == Phase::Closed {
            return;
        }
        if due(self.header_deadline) {
            self.reject_with(Status::RequestTimeout, router, actions);
        } else if due(self.idle_deadline) {
            self.close_all(router, actions);
        } else if due(self.connect_deadline) {
            self.connect_deadline = None;
            self.backend = Backend::None;
            actions.push(Action::CloseBackend);
            if !self.try_again(now, router, actions) {
                self.fail(Status::GatewayTimeout, router, actions);
            }
        } else if due(self.total_deadline) {
            if self.answered {
                self.close_all(router, actions);
            } else {
                self.fail(Status::GatewayTimeout, router, actions);
            }
        }
        self.rearm(actions);
    }

    /// Moves every byte that can move, then arms the next deadline.
    fn pump<R: Router>(&mut self, now: Millis, router: &mut R, actions: &mut Vec<Action>) {
        let (cout, bout) = (self.cout.len(), self.bout.len());
        loop {
            let progress = match self.phase {
                Phase::Head => self.read_head(now, router, actions),
                Phase::Exchange => self.exchange(now, router, actions),
                Phase::Tunnel => {
                    let moved = self.tunnel();
                    if moved {
                        self.idle_deadline = Some(now + self.config.timeouts.idle);
                    }
                    moved
                }
                Phase::Closed => false,
            };
            if !progress {
                break;
            }
        }
        if self.cout.len() > cout {
            actions.push(Action::WriteClient);
        }
        if self.bout.len() > bout {
            actions.push(Action::WriteBackend);
        }
        self.rearm(actions);
    }

    fn read_head<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) -> bool {
        if self.cin.is_empty() {
            if self.client_eof {
                self.close_all(router, actions);
                return true;
            }
            return false;
        }
        if self.header_deadline.is_none() {
            self.header_deadline = Some(now + self.config.timeouts.header_read);
            self.idle_deadline = None;
        }
        let len = match self.scan.scan(&self.cin, &self.config.limits) {
            Ok(Some(len)) => {
                self.begin_request(actions);
                len
            }
            Ok(None) if self.client_eof => {
                // A head cut short by the end of the stream: nothing to answer.
                self.close_all(router, actions);
                return true;
            }
            Ok(None) => return false,
            Err(reason) => return self.reject(reason, router, actions),
        };
        if let Err(reason) = parse_request(&self.cin, len, &self.config.limits, &mut self.req) {
            return self.reject(reason, router, actions);
        }
        self.header_deadline = None;
        self.req_body = match self.req.framing {
            Framing::None => BodyReader::Done,
            Framing::Length(n) => BodyReader::Length(n),
            Framing::Chunked => BodyReader::Chunked(Default::default()),
        };
        // Refuse a bad body already received before any byte of the request leaves.
        if let Err(reason) = self
            .req_body
            .check_ahead(&self.cin[len..], &self.config.limits)
        {
            return self.reject(reason, router, actions);
        }
        let view = RequestView::new(&self.cin, &self.req, self.client.addr);
        // A request whose body is still coming cannot be skipped safely: a local answer closes
        // after it.
        let close = self.req.close || self.req.framing != Framing::None;
        // The answer to HEAD has no body: one would be read as the start of the next answer.
        let to_head = self.req.method == Method::Head;
        let pick = match router.route_request(&view) {
            Routed::Send(pick, rewrite, set_cookie) => {
                self.set_cookie.clear();
                if let Some(c) = set_cookie {
                    c.write(&mut self.set_cookie);
                }
                self.sent_head.clear();
                write_request_head(
                    &self.cin,
                    &self.req,
                    &self.client,
                    rewrite,
                    &mut self.sent_head,
                );
                pick
            }
            Routed::Answer(status) => {
                self.cout.extend_from_slice(if to_head {
                    status.answer_to_head(close)
                } else {
                    status.answer(close)
                });
                self.count_answer(status.code(), actions);
                self.answered_locally(now, len, close, router, actions);
                return true;
            }
            Routed::Redirect(redirect) => {
                let from = RedirectFrom {
                    tls: self.client.tls,
                    host: self.req.host.map_or(&[][..], |h| h.of(&self.cin)),
                    target: self.req.path.of(&self.cin),
                };
                redirect.write_answer(&from, close, to_head, &mut self.cout);
                let code = redirect.status().code();
                self.count_answer(code, actions);
                self.answered_locally(now, len, close, router, actions);
                return true;
            }
        };
        self.cin.drain(..len);
        self.phase = Phase::Exchange;
        self.retried = false;
        self.sent = false;
        self.answered = false;
        self.in_body = false;
        self.dechunk = false;
        self.close_after = self.req.close;
        self.total_deadline = Some(now + self.config.timeouts.total);
        self.connect(now, pick, actions);
        true
    }

    /// The request whose head is `cin[..len]` was answered by the proxy: the next request, or
    /// the end of the connection.
    fn answered_locally<R: Router>(
        &mut self,
        now: Millis,
        len: usize,
        close: bool,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        self.cin.drain(..len);
        if close {
            self.close_all(router, actions);
        } else {
            self.end_request(router, actions);
            self.next_request(now);
        }
    }

    fn connect(&mut self, now: Millis, pick: Pick, actions: &mut Vec<Action>) {
        actions.push(Action::Connect(pick.backend));
        self.served_by = Some((pick.split, pick.backend));
        self.pick = Some(pick);
        self.backend = Backend::Connecting;
        self.connect_deadline = Some(now + self.config.timeouts.connect);
    }

    /// The one retry, on another backend: only while the request can be sent again whole.
    fn try_again<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) -> bool {
        if self.retried || self.answered {
            return false;
        }
        let Some(pick) = self.pick else { return false };
        // Body bytes already passed on are gone: a request with a body is retried only if
        // nothing of it left.
        if self.sent && self.req.framing != Framing::None {
            return false;
        }
        router.finished(&pick);
        let Some(next) = router.retry(&pick) else {
            self.pick = None;
            return false;
        };
        self.retried = true;
        self.sent = false;
        self.bout.clear();
        self.bin.clear();
        self.connect(now, next, actions);
        true
    }

    fn exchange<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) -> bool {
        if self.backend != Backend::Ready {
            return false;
        }
        let mut progress = false;
        // Request body, client -> backend.
        while !self.req_body.is_done()
            && !self.cin.is_empty()
            && self.bout.len() < self.config.buffer
        {
            match self.req_body.decode(&self.cin, &self.config.limits) {
                Ok(step) => {
                    self.bout.extend_from_slice(&self.cin[..step.consumed]);
                    self.cin.drain(..step.consumed);
                    progress = true;
                    if step.consumed == 0 {
                        break;
                    }
                }
                Err(reason) => {
                    if self.answered {
                        self.close_all(router, actions);
                    } else {
                        self.release_pick(router);
                        actions.push(Action::CloseBackend);
                        self.backend = Backend::None;
                        self.reject(reason, router, actions);
                    }
                    return true;
                }
            }
        }
        // Response, backend -> client.
        while !self.in_body && !self.bin.is_empty() {
            match parse_response(
                &self.bin,
                &self.config.limits,
                self.req.method,
                &mut self.resp,
            ) {
                Ok(None) => break,
                Err(_) => {
                    actions.push(Action::CloseBackend);
                    self.backend = Backend::None;
                    if self.answered {
                        self.close_all(router, actions);
                    } else {
                        self.fail(Status::BadGateway, router, actions);
                    }
                    return true;
                }
                Ok(Some(reader)) => {
                    progress = true;
                    let head_len = self.resp.len;
                    if self.resp.is_interim() {
                        if self.req.version == Version::Http11 {
                            let how = ResponseOut {
                                close: false,
                                dechunk: false,
                            };
                            write_response_head(&self.bin, &self.resp, how, &[], &mut self.cout);
                        }
                        self.bin.drain(..head_len);
                        continue;
                    }
                    if self.resp.status == 101 {
                        if !self.req.upgrade {
                            actions.push(Action::CloseBackend);
                            self.backend = Backend::None;
                            self.fail(Status::BadGateway, router, actions);
                            return true;
                        }
                        let how = ResponseOut {
                            close: false,
                            dechunk: false,
                        };
                        write_response_head(&self.bin, &self.resp, how, &[], &mut self.cout);
                        self.bin.drain(..head_len);
                        self.answered = true;
                        self.count_answer(101, actions);
                        self.end_request(router, actions);
                        self.phase = Phase::Tunnel;
                        self.total_deadline = None;
                        // A tunnel lives while bytes move; idle for `idle`, it closes.
                        self.idle_deadline = Some(now + self.config.timeouts.idle);
                        return true;
                    }
                    self.dechunk = self.resp.chunked && self.req.version == Version::Http10;
                    if reader == BodyReader::UntilClose || self.dechunk {
                        self.close_after = true;
                    }
                    let how = ResponseOut {
                        close: self.close_after,
                        dechunk: self.dechunk,
                    };
                    write_response_head(
                        &self.bin,
                        &self.resp,
                        how,
                        &self.set_cookie,
                        &mut self.cout,
                    );
                    self.bin.drain(..head_len);
                    self.resp_body = reader;
                    self.in_body = true;
                    self.answered = true;
                    self.count_answer(self.resp.status, actions);
                }
            }
        }
        // Response body.
        while self.in_body
            && !self.resp_body.is_done()
            && !self.bin.is_empty()
            && self.cout.len() < self.config.buffer
        {
            match self.resp_body.decode(&self.bin, &self.config.limits) {
                Ok(step) => {
                    if self.dechunk {
                        self.cout.extend_from_slice(&self.bin[step.data.clone()]);
                    } else {
                        self.cout.extend_from_slice(&self.bin[..step.consumed]);
                    }
                    self.bin.drain(..step.consumed);
                    progress = true;
                    if step.consumed == 0 {
                        break;
                    }
                }
                Err(_) => {
                    // The client already has the head: all that is left is to cut.
                    self.close_all(router, actions);
                    return true;
                }
            }
        }
        if self.in_body && self.resp_body.is_done() {
            self.finish_exchange(now, router, actions);
            return true;
        }
        progress
    }

    /// The response is complete: give back or close the backend, then the next request.
    fn finish_exchange<R: Router>(
        &mut self,
        now: Millis,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        self.end_request(router, actions);
        self.release_pick(router);
        let request_done = self.req_body.is_done();
        if self.backend == Backend::Ready {
            // Leftover bytes after a complete response mean the backend's framing is not ours.
            if self.resp.reusable && request_done && self.bin.is_empty() {
                actions.push(Action::ReleaseBackend);
            } else {
                actions.push(Action::CloseBackend);
            }
        }
        self.backend = Backend::None;
        self.bin.clear();
        self.bout.clear();
        self.total_deadline = None;
        self.connect_deadline = None;
        if self.close_after || !request_done {
            self.close_all(router, actions);
        } else {
            self.next_request(now);
        }
    }

    fn next_request(&mut self, now: Millis) {
        self.phase = Phase::Head;
        self.scan.reset();
        self.in_body = false;
        self.idle_deadline = Some(now + self.config.timeouts.idle);
        self.header_deadline = None;
    }

    fn release_pick<R: Router>(&mut self, router: &mut R) {
        if let Some(pick) = self.pick.take() {
            router.finished(&pick);
        }
    }

    fn tunnel(&mut self) -> bool {
        let mut progress = false;
        if !self.cin.is_empty() && self.bout.len() < self.config.buffer {
            self.bout.append(&mut self.cin);
            progress = true;
        }
        if !self.bin.is_empty() && self.cout.len() < self.config.buffer {
            self.cout.append(&mut self.bin);
            progress = true;
        }
        progress
    }

    /// A local answer instead of a response; the backend (if any) is closed.
    fn fail<R: Router>(&mut self, status: Status, router: &mut R, actions: &mut Vec<Action>) {
        self.release_pick(router);
        if self.backend != Backend::None {
            actions.push(Action::CloseBackend);
            self.backend = Backend::None;
        }
        self.reject_with(status, router, actions);
    }

    fn reject<R: Router>(
        &mut self,
        reason: RejectReason,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) -> bool {
        actions.push(Action::Refused(reason));
        self.reject_with(reason.status(), router, actions);
        true
    }

    /// Answers `status` and closes: the rest of the input cannot be trusted to be framed right.
    fn reject_with<R: Router>(
        &mut self,
        status: Status,
        router: &mut R,
        actions: &mut Vec<Action>,
    ) {
        // A refusal before any head was complete (bad bytes, 408) is a request too.
        if !self.in_request {
            self.begin_request(actions);
        }
        self.cout.extend_from_slice(status.answer(true));
        self.count_answer(status.code(), actions);
        self.answered = true;
        self.close_all(router, actions);
    }

    /// Ends everything: the backend (if any) is closed, the client closed after its output.
    fn close_all<R: Router>(&mut self, router: &mut R, actions: &mut Vec<Action>) {
        // The request in flight is over too (least-outstanding bookkeeping, metrics).
        self.end_request(router, actions);
        self.release_pick(router);
        if self.backend != Backend::None {
            actions.push(Action::CloseBackend);
            self.backend = Backend::None;
        }
        if !self.cout.is_empty() {
            actions.push(Action::WriteClient);
        }
        actions.push(Action::CloseClient);
        self.phase = Phase::Closed;
        self.cin.clear();
        self.bin.clear();
        self.bout.clear();
        self.header_deadline = None;
        self.idle_deadline = None;
        self.connect_deadline = None;
        self.total_deadline = None;
    }

    fn rearm(&mut self, actions: &mut Vec<Action>) {
        let next = [
            self.header_deadline,
            self.idle_deadline,
            self.connect_deadline,
            self.total_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = next {
            if self.armed != Some(at) {
                self.armed = Some(at);
                actions.push(Action::ArmTimer(at));
            }
        }
    }
}

/// What the connection answered (for a transport's metrics).
impl Conn {
    /// Answers given so far, by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]` (a transport's
    /// metrics count the difference after each call).
    pub fn answers(&self) -> [u64; 5] {
        self.answers
    }

    fn count_answer(&mut self, status: u16, actions: &mut Vec<Action>) {
        self.answers[status_class(status)] += 1;
        self.status = status;
        actions.push(Action::ResponseStarted);
    }

    fn begin_request(&mut self, actions: &mut Vec<Action>) {
        self.in_request = true;
        self.status = 0;
        self.served_by = None;
        actions.push(Action::RequestStarted);
    }

    /// Reports the current request's end, once; nothing when it was never answered.
    fn end_request<R: Router>(&mut self, router: &mut R, actions: &mut Vec<Action>) {
        if !std::mem::take(&mut self.in_request) || self.status == 0 {
            return;
        }
        let key = self
            .served_by
            .map_or(0, |(split, backend)| router.metrics_key(split, backend));
        actions.push(Action::RequestEnded(Ended {
            split: self.served_by.map(|(split, _)| split),
            backend: self.served_by.map(|(_, backend)| backend),
            status: self.status,
            key,
        }));
    }
}
