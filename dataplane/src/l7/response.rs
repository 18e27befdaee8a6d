//! Backend response heads: httparse reads them; the framing rules of RFC 9112 §6.3 decide how the
//! body ends and whether the backend connection may carry another request.
//!
//! A response whose framing is ambiguous (Transfer-Encoding with Content-Length, a coding other
//! than chunked, no framing at all) is still delivered, but its connection is never reused; one
//! whose length cannot be known (bad or conflicting Content-Length) is refused (502).

use super::body::{BodyReader, ChunkedDecoder};
use super::head::{list_items, trim, Field, FieldKind, Limits, Method, Span, MAX_HEADERS};

/// Why a backend response head was refused (the client gets 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// httparse refused the head (or it is not HTTP/1.x).
    Syntax,
    /// The head is larger than the limit.
    TooLarge,
    /// Content-Length repeated with different values, or not digits.
    ContentLength,
}

/// A parsed response head: spans into the backend buffer.
#[derive(Clone, Debug, Default)]
pub struct ResponseHead {
    /// Bytes of the head.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: Span,
    /// Every field in order.
    pub fields: Vec<Field>,
    /// The body arrives chunked (the client gets it chunked too, unless it speaks HTTP/1.0).
    pub chunked: bool,
    /// The backend connection may carry another request after this response.
    pub reusable: bool,
}

impl ResponseHead {
    /// 1xx other than 101: another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete. Returns the reader
/// for its body (RFC 9112 §6.3) given the request `method`.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    method: Method,
    head: &mut ResponseHead,
) -> Result<Option<BodyReader>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_head => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Syntax),
    };
    let base = buf.as_ptr() as usize;
    let span_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        Span {
            start: start as u32,
            end: (start + s.len()) as u32,
        }
    };
    head.len = len;
    head.status = response.code.unwrap_or(0);
    head.reason = span_of(response.reason.unwrap_or("").as_bytes());
    head.fields.clear();
    head.chunked = false;
    let mut reusable = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut transfer_coding = false;
    for f in response.headers.iter() {
        let value = trim(f.value);
        let kind = FieldKind::of_response(f.name.as_bytes());
        match kind {
            FieldKind::ContentLength => {
                for item in list_items(value) {
                    let n = parse_digits(item).ok_or(BadResponse::ContentLength)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(BadResponse::ContentLength);
                    }
                    length = Some(n);
                }
                if list_items(value).next().is_none() {
                    return Err(BadResponse::ContentLength);
                }
            }
            FieldKind::TransferEncoding => {
                transfer_coding = true;
                let mut items = list_items(value);
                // Only a lone `chunked` keeps the body reader and the client in agreement.
                head.chunked = items
                    .next()
                    .is_some_and(|i| i.eq_ignore_ascii_case(b"chunked"))
                    && items.next().is_none()
                    && !head.chunked;
            }
            FieldKind::Connection
                if list_items(value).any(|t| t.eq_ignore_ascii_case(b"close")) =>
            {
                reusable = false;
            }
            _ => {}
        }
        head.fields.push(Field {
            name: span_of(f.name.as_bytes()),
            value: span_of(value),
            kind,
        });
    }
    let bodiless = method == Method::Head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    let reader = if bodiless {
        BodyReader::Done
    } else if transfer_coding {
        if length.is_some() || !head.chunked {
            reusable = false;
        }
        if head.chunked {
            BodyReader::Chunked(ChunkedDecoder::default())
        } else {
            BodyReader::UntilClose
        }
    } else if let Some(n) = length {
        if n == 0 {
            BodyReader::Done
        } else {
            BodyReader::Length(n)
        }
    } else {
        reusable = false;
        BodyReader::UntilClose
    };
    head.reusable = reusable && head.status != 101;
    Ok(Some(reader))
}

fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// How the response head is sent on to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseOut {
    /// Add `connection: close` (the client connection ends after this response).
    pub close: bool,
    /// The body is sent de-chunked and close-delimited (an HTTP/1.0 client).
    pub dechunk: bool,
}

/// Appends the head to send to the client for `head` (parsed from `buf`), with the header
/// lines `extra` (each ending in CRLF) added after the backend's fields.
pub fn write_response_head(
    buf: &[u8],
    head: &ResponseHead,
    how: ResponseOut,
    extra: &[u8],
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let listed = |name: &[u8]| {
        head.fields
            .iter()
            .filter(|f| f.kind == FieldKind::Connection)
            .any(|f| list_items(f.value.of(buf)).any(|t| t.eq_ignore_ascii_case(name)))
    };
    for field in &head.fields {
        let keep = match field.kind {
            FieldKind::Connection | FieldKind::HopByHop => false,
            FieldKind::Upgrade => head.status == 101,
            FieldKind::TransferEncoding => !how.dechunk,
            FieldKind::ContentLength => !head.chunked,
            _ => !listed(field.name.of(buf)),
        };
        if keep {
            out.extend_from_slice(field.name.of(buf));
            out.extend_from_slice(b": ");
            out.extend_from_slice(field.value.of(buf));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(extra);
    if head.status == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if how.close && !head.is_interim() {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], method: Method) -> Result<(ResponseHead, BodyReader), BadResponse> {
        let mut head = ResponseHead::default();
        let reader = parse_response(raw, &Limits::default(), method, &mut head)?.unwrap();
        Ok((head, reader))
    }

    #[test]
    fn framing_and_reuse() {
        let (h, r) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::Get).unwrap();
        assert_eq!((r, h.reusable), (BodyReader::Length(5), true));
        let (h, r) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Head,
        )
        .unwrap();
        assert_eq!((r, h.reusable), (BodyReader::Done, true));
        let (h, r) = parse(b"HTTP/1.1 200 OK\r\n\r\n", Method::Get).unwrap();
        assert_eq!((r, h.reusable), (BodyReader::UntilClose, false));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, r) = parse(raw, Method::Get).unwrap();
        assert_eq!(
            (r, h.reusable),
            (BodyReader::Chunked(ChunkedDecoder::default()), false)
        );
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
        )
        .unwrap();
        assert!(!h.reusable);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(
            parse(raw, Method::Get).unwrap_err(),
            BadResponse::ContentLength
        );
    }

    #[test]
    fn head_sent_on_drops_hop_by_hop() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nKeep-Alive: 1\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n";
        let (h, _) = parse(raw, Method::Get).unwrap();
        let mut out = Vec::new();
        write_response_head(
            raw,
            &h,
            ResponseOut {
                close: true,
                dechunk: true,
            },
            b"set-cookie: s=1\r\n",
            &mut out,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-B: 2\r\nset-cookie: s=1\r\nconnection: close\r\n\r\n"
        );
    }
}
