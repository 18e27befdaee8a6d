//! Request heads: our own strict request line, httparse for the header fields, and the checks
//! that keep a request from meaning two things (RFC 9112 §2.2, §3, §5, §6.3).
//!
//! A head is found by [`HeadScan`], one pass over new bytes only, which also refuses bare CR,
//! bare LF and obs-fold before anything else reads the bytes. [`parse_request`] then reads the
//! complete head into a [`RequestHead`] of spans into the caller's buffer (no copies); its field
//! list is reused from request to request.

use super::errors::RejectReason;

/// Size limits for heads and bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (RFC 9112 §3 recommends at least 8000 octets): 414 beyond.
    pub max_request_line: usize,
    /// Largest head (request line and fields; also the trailer section): 431 beyond.
    pub max_head: usize,
    /// Most header fields: 431 beyond.
    pub max_headers: usize,
    /// Longest chunk-size line with its extensions: 400 beyond.
    pub max_chunk_line: usize,
    /// Largest request body: 413 beyond.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8192,
            max_head: 32 * 1024,
            max_headers: 100,
            max_chunk_line: 4096,
            max_body: 1 << 30,
        }
    }
}

/// The most header fields any [`Limits`] may allow (the field array lives on the stack).
pub const MAX_HEADERS: usize = 256;

/// A byte range of the buffer a head was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        // Heads are bounded by `Limits::max_head`, far below u32::MAX.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes of this span in `buf`.
    pub fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// True when the span covers no bytes.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// The protocol version of a request. HTTP/1.2 to 1.9 are read as 1.1 (RFC 9110 §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1 (and higher minor versions).
    Http11,
}

/// The methods the proxy treats differently (retries, bodiless responses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: the response never has a body.
    Head,
    /// OPTIONS.
    Options,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// TRACE.
    Trace,
    /// Anything else (POST, PATCH, extension methods).
    Other,
}

impl Method {
    fn of(name: &[u8]) -> Method {
        match name {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"OPTIONS" => Method::Options,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: repeating the request has the same effect as sending it once.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Other)
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Content-Length bytes.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// The fields the proxy reads or rewrites; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Host.
    Host,
    /// Content-Length.
    ContentLength,
    /// Transfer-Encoding.
    TransferEncoding,
    /// Connection.
    Connection,
    /// Hop-by-hop fields always removed: Keep-Alive, Proxy-Connection, TE.
    HopByHop,
    /// Upgrade (kept only on an upgrade request).
    Upgrade,
    /// Expect.
    Expect,
    /// X-Forwarded-For/-Proto/-Host and Forwarded: replaced by the proxy's own.
    Forwarding,
    /// Any other field.
    Other,
}

impl FieldKind {
    /// A response field's kind: the forwarding fields are request-only, so they pass.
    pub(crate) fn of_response(name: &[u8]) -> FieldKind {
        match FieldKind::of(name) {
            FieldKind::Forwarding | FieldKind::Host | FieldKind::Expect => FieldKind::Other,
            kind => kind,
        }
    }

    pub(crate) fn of(name: &[u8]) -> FieldKind {
        const NAMES: &[(&[u8], FieldKind)] = &[
            (b"host", FieldKind::Host),
            (b"content-length", FieldKind::ContentLength),
            (b"transfer-encoding", FieldKind::TransferEncoding),
            (b"connection", FieldKind::Connection),
            (b"keep-alive", FieldKind::HopByHop),
            (b"proxy-connection", FieldKind::HopByHop),
            (b"te", FieldKind::HopByHop),
            (b"upgrade", FieldKind::Upgrade),
            (b"expect", FieldKind::Expect),
            (b"x-forwarded-for", FieldKind::Forwarding),
            (b"x-forwarded-proto", FieldKind::Forwarding),
            (b"x-forwarded-host", FieldKind::Forwarding),
            (b"forwarded", FieldKind::Forwarding),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(FieldKind::Other, |&(_, k)| k)
    }
}

/// One header field: spans into the head's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name as sent.
    pub name: Span,
    /// The value without surrounding whitespace.
    pub value: Span,
    /// What the proxy does with it.
    pub kind: FieldKind,
}

/// A parsed request head: spans into the buffer it was parsed from.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// Bytes of the head, leading empty lines and the final empty line included.
    pub len: usize,
    /// The method as sent.
    pub method_name: Span,
    /// The method, classified.
    pub method: Method,
    /// The path and query to send on (origin-form); empty for an absolute-form target without a
    /// path, which is sent as `/`.
    pub path: Span,
    /// The version.
    pub version: Version,
    /// The authority: from an absolute-form target, else the Host field; `None` only for an
    /// HTTP/1.0 request without Host.
    pub host: Option<Span>,
    /// Every header field in order.
    pub fields: Vec<Field>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client closes after this request (Connection: close, or HTTP/1.0).
    pub close: bool,
    /// Connection: upgrade with an Upgrade field.
    pub upgrade: bool,
    /// Expect: 100-continue.
    pub expect_continue: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            len: 0,
            method_name: Span::default(),
            method: Method::Get,
            path: Span::default(),
            version: Version::Http11,
            host: None,
            fields: Vec::new(),
            framing: Framing::None,
            close: false,
            upgrade: false,
            expect_continue: false,
        }
    }
}

impl RequestHead {
    /// True when `name` is listed in a Connection field (so it is hop-by-hop).
    pub fn connection_lists(&self, buf: &[u8], name: &[u8]) -> bool {
        self.fields
            .iter()
            .filter(|f| f.kind == FieldKind::Connection)
            .any(|f| list_items(f.value.of(buf)).any(|t| t.eq_ignore_ascii_case(name)))
    }
}

/// Finds the end of a head in bytes that arrive piecewise, refusing bare CR, bare LF and
/// obs-fold on the way. Each byte is looked at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadScan {
    pos: usize,
    line_start: usize,
    request_line_end: Option<usize>,
}

impl HeadScan {
    /// Start over for the next head (at offset 0 of the buffer).
    pub fn reset(&mut self) {
        *self = HeadScan::default();
    }

    /// Scans `buf` from where the last call stopped; `Some(len)` once the head is complete.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, RejectReason> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            if b == b'\r' {
                let Some(&next) = buf.get(self.pos + 1) else {
                    break;
                };
                if next != b'\n' {
                    return Err(RejectReason::BareCr);
                }
                let empty = self.line_start == self.pos;
                match self.request_line_end {
                    // Empty lines before the request line are skipped (RFC 9112 §2.2).
                    None if empty => {}
                    None => {
                        if self.pos - self.line_start > limits.max_request_line {
                            return Err(RejectReason::UriTooLong);
                        }
                        self.request_line_end = Some(self.pos);
                    }
                    Some(_) if empty => {
                        self.pos += 2;
                        if self.pos > limits.max_head {
                            return Err(RejectReason::HeadTooLarge);
                        }
                        return Ok(Some(self.pos));
                    }
                    Some(_) => {}
                }
                self.pos += 2;
                self.line_start = self.pos;
                continue;
            }
            if b == b'\n' {
                return Err(RejectReason::BareLf);
            }
            if self.pos == self.line_start
                && self.request_line_end.is_some()
                && (b == b' ' || b == b'\t')
            {
                return Err(RejectReason::ObsFold);
            }
            self.pos += 1;
        }
        if self.request_line_end.is_none() && self.pos - self.line_start > limits.max_request_line {
            return Err(RejectReason::UriTooLong);
        }
        if self.pos > limits.max_head {
            return Err(RejectReason::HeadTooLarge);
        }
        Ok(None)
    }
}

/// RFC 9110 §5.6.2 tchar.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Elements of a comma-separated list, trimmed, empty ones skipped.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `host [":" port]`: a reg-name or an IP literal, no userinfo, no whitespace (RFC 3986 §3.2.2).
pub(crate) fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b))
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let host_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// Parses the complete head `buf[..len]` (as found by [`HeadScan`]) into `head`.
pub fn parse_request(
    buf: &[u8],
    len: usize,
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<(), RejectReason> {
    head.len = len;
    head.fields.clear();
    head.host = None;
    head.framing = Framing::None;
    head.close = false;
    head.upgrade = false;
    head.expect_continue = false;

    // Skip the empty lines HeadScan allowed before the request line.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let line_end = start + find_crlf(&buf[start..len]).ok_or(RejectReason::RequestLine)?;
    let absolute_host = parse_request_line(buf, start, line_end, head)?;

    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let cap = limits.max_headers.min(MAX_HEADERS - 1) + 1;
    let fields_start = line_end + 2;
    let parsed = match httparse::parse_headers(&buf[fields_start..len], &mut storage[..cap]) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => return Err(RejectReason::HeaderSyntax),
        Err(httparse::Error::TooManyHeaders) => return Err(RejectReason::TooManyHeaders),
        Err(_) => return Err(RejectReason::HeaderSyntax),
    };
    if parsed.len() > limits.max_headers {
        return Err(RejectReason::TooManyHeaders);
    }
    let base = buf.as_ptr() as usize;
    let span_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        Span::new(start, start + s.len())
    };

    let mut host_field = None;
    let mut content_length = None;
    let mut chunked = false;
    let mut connection_upgrade = false;
    let mut has_upgrade = false;
    for f in parsed.iter() {
        let value = trim(f.value);
        let field = Field {
            name: span_of(f.name.as_bytes()),
            value: span_of(value),
            kind: FieldKind::of(f.name.as_bytes()),
        };
        match field.kind {
            FieldKind::Host => {
                if host_field.replace(field.value).is_some() {
                    return Err(RejectReason::DuplicateHost);
                }
                if !value.is_empty() && !valid_authority(value) {
                    return Err(RejectReason::BadHost);
                }
            }
            FieldKind::ContentLength => {
                if content_length.is_some() {
                    return Err(RejectReason::ContentLength);
                }
                content_length = Some(parse_content_length(value)?);
            }
            FieldKind::TransferEncoding => {
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(RejectReason::TransferEncoding);
                }
                chunked = true;
            }
            FieldKind::Connection => {
                for token in list_items(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else if [&b"content-length"[..], b"transfer-encoding", b"host"]
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(token))
                    {
                        // Removing a framing field as hop-by-hop would reframe the request.
                        return Err(RejectReason::ConnectionFraming);
                    }
                }
            }
            FieldKind::Upgrade => has_upgrade = true,
            FieldKind::Expect => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(RejectReason::Expectation);
                }
                head.expect_continue = head.version == Version::Http11;
            }
            _ => {}
        }
        head.fields.push(field);
    }

    head.framing = match (content_length, chunked) {
        (Some(_), true) => return Err(RejectReason::ContentLengthWithTe),
        (None, true) if head.version == Version::Http10 => {
            return Err(RejectReason::TransferEncoding)
        }
        (None, true) => Framing::Chunked,
        (Some(n), false) if n > limits.max_body => return Err(RejectReason::BodyTooLarge),
        (Some(0), false) | (None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    };
    if head.version == Version::Http11 && host_field.is_none() {
        return Err(RejectReason::MissingHost);
    }
    head.host = absolute_host.or(host_field);
    head.upgrade = connection_upgrade && has_upgrade;
    // HTTP/1.0 keep-alive is not offered (Connection: keep-alive is ignored): the connection
    // closes after each answer, as a 1.0 client cannot read chunked bodies and close-delimiting
    // is the one framing that always works for it.
    head.close |= head.version == Version::Http10;
    Ok(())
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// 1*DIGIT, nothing else (no sign, list or whitespace), within u64.
fn parse_content_length(v: &[u8]) -> Result<u64, RejectReason> {
    if v.is_empty() {
        return Err(RejectReason::ContentLength);
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(RejectReason::ContentLength);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(RejectReason::ContentLength)
    })
}

/// True when the path of `target` (up to `?`) has a segment that is `.` or `..`, plainly or
/// with `%2e` for a dot.
fn has_dot_segment(target: &[u8]) -> bool {
    let path = &target[..target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len())];
    path.split(|&b| b == b'/').any(|seg| {
        let mut dots = 0;
        let mut rest = seg;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
}

/// `method SP target SP HTTP/d.d`, exactly. Returns the authority of an absolute-form target.
fn parse_request_line(
    buf: &[u8],
    start: usize,
    end: usize,
    head: &mut RequestHead,
) -> Result<Option<Span>, RejectReason> {
    let line = &buf[start..end];
    let method_len = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(RejectReason::RequestLine)?;
    let method = &line[..method_len];
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(RejectReason::RequestLine);
    }
    let rest = &line[method_len + 1..];
    let target_len = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or(RejectReason::RequestLine)?;
    let target = &rest[..target_len];
    let version = &rest[target_len + 1..];
    head.version = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            match (major, minor) {
                (b'1', b'0') => Version::Http10,
                (b'1', _) => Version::Http11,
                _ => return Err(RejectReason::Version),
            }
        }
        _ => return Err(RejectReason::RequestLine),
    };
    if target.is_empty() {
        return Err(RejectReason::RequestLine);
    }
    // Visible ASCII only: no raw UTF-8, controls or fragment.
    if !target
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(RejectReason::Target);
    }
    head.method_name = Span::new(start, start + method_len);
    head.method = Method::of(method);
    if method == b"CONNECT" {
        return Err(RejectReason::Connect);
    }
    let target_start = start + method_len + 1;
    if target[0] == b'/' || (target == b"*" && method == b"OPTIONS") {
        if has_dot_segment(target) {
            return Err(RejectReason::DotSegment);
        }
        head.path = Span::new(target_start, target_start + target_len);
        return Ok(None);
    }
    let scheme_len = [&b"http://"[..], b"https://"]
        .iter()
        .find(|s| target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s))
        .map(|s| s.len())
        .ok_or(RejectReason::Target)?;
    let after = &target[scheme_len..];
    let authority_len = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..authority_len];
    if authority.is_empty() || !valid_authority(authority) {
        return Err(RejectReason::BadHost);
    }
    if has_dot_segment(&after[authority_len..]) {
        return Err(RejectReason::DotSegment);
    }
    let authority_start = target_start + scheme_len;
    head.path = Span::new(authority_start + authority_len, target_start + target_len);
    Ok(Some(Span::new(
        authority_start,
        authority_start + authority_len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<RequestHead, RejectReason> {
        let limits = Limits::default();
        let mut scan = HeadScan::default();
        let len = scan.scan(raw, &limits)?.expect("complete head");
        let mut head = RequestHead::default();
        parse_request(raw, len, &limits, &mut head)?;
        Ok(head)
    }

    #[test]
    fn dot_segments_are_refused_plain_or_encoded() {
        let req =
            |target: &str| parse(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        for bad in [
            "/public/../admin",
            "/a/./b",
            "/..",
            "/a/.",
            "/%2e%2e/etc/passwd",
            "/x/.%2E/y",
            "/%2E/",
            "http://h/a/../b",
            "/../?q=1",
        ] {
            assert_eq!(req(bad).map(|_| ()), Err(RejectReason::DotSegment), "{bad}");
        }
        for good in [
            "/a..b/",
            "/.well-known/acme",
            "/...",
            "/a/...x",
            "/a?x=../y",
            "/a.b/c%2ed",
            "/%2e%2e%2e",
            "*",
        ] {
            let raw = if good == "*" {
                "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n".to_string()
            } else {
                format!("GET {good} HTTP/1.1\r\nHost: h\r\n\r\n")
            };
            assert!(parse(raw.as_bytes()).is_ok(), "{good}");
        }
        assert_eq!(
            RejectReason::DotSegment.status(),
            crate::l7::errors::Status::BadRequest
        );
    }

    #[test]
    fn origin_form_get() {
        let raw = b"GET /a?b HTTP/1.1\r\nHost: lb.test\r\nX: y \r\n\r\n";
        let head = parse(raw).unwrap();
        assert_eq!(head.path.of(raw), b"/a?b");
        assert_eq!(head.host.unwrap().of(raw), b"lb.test");
        assert_eq!(head.fields[1].value.of(raw), b"y");
        assert_eq!(head.framing, Framing::None);
        assert!(!head.close);
    }

    #[test]
    fn absolute_form_takes_the_authority() {
        let raw = b"GET http://other.test?q HTTP/1.1\r\nHost: lb.test\r\n\r\n";
        let head = parse(raw).unwrap();
        assert_eq!(head.host.unwrap().of(raw), b"other.test");
        assert_eq!(head.path.of(raw), b"?q");
    }

    #[test]
    fn scan_waits_for_the_whole_head_byte_by_byte() {
        let raw = b"\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let limits = Limits::default();
        let mut scan = HeadScan::default();
        let mut found = None;
        for end in 1..=raw.len() {
            if let Some(len) = scan.scan(&raw[..end], &limits).unwrap() {
                found = Some(len);
                break;
            }
        }
        assert_eq!(found, Some(raw.len() - 3));
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], RejectReason)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", RejectReason::BareCr),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", RejectReason::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", RejectReason::ObsFold),
            (b"GET / HTTP/1.1\r\n\r\n", RejectReason::MissingHost),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", RejectReason::Version),
            (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", RejectReason::RequestLine),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason::Connect),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", RejectReason::DuplicateHost),
            (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", RejectReason::BadHost),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                RejectReason::ContentLengthWithTe,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", RejectReason::ContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", RejectReason::TransferEncoding),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n", RejectReason::ConnectionFraming),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", RejectReason::Expectation),
        ];
        for (raw, reason) in cases {
            assert_eq!(
                parse(raw).unwrap_err(),
                *reason,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_request_line: 16,
            max_head: 64,
            max_headers: 2,
            ..Limits::default()
        };
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.scan(b"GET /aaaaaaaaaaaaaaaaaaa", &limits),
            Err(RejectReason::UriTooLong)
        );
        let mut scan = HeadScan::default();
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 64]].concat();
        assert_eq!(scan.scan(&big, &limits), Err(RejectReason::HeadTooLarge));
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(raw, raw.len(), &limits, &mut head),
            Err(RejectReason::TooManyHeaders)
        );
    }
}
