//! Why a request is refused, and the short answers the proxy writes itself.
//!
//! Every answer is a `&'static [u8]` built at compile time: refusing a request allocates nothing.

/// Why a request (or a backend response) was refused: one reason per check, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A CR not followed by LF in a head or chunk line.
    BareCr,
    /// An LF not preceded by CR in a head or chunk line.
    BareLf,
    /// A header line continued on the next line (obs-fold).
    ObsFold,
    /// The request line is not `method SP target SP HTTP/x.y`.
    RequestLine,
    /// The request target is not origin-, absolute- or asterisk-form, or has bytes a URI may not.
    Target,
    /// Not HTTP/1.x.
    Version,
    /// The request line is longer than the limit.
    UriTooLong,
    /// The head is larger than the limit.
    HeadTooLarge,
    /// More header fields than the limit.
    TooManyHeaders,
    /// A header line httparse refuses (name, colon, value bytes).
    HeaderSyntax,
    /// HTTP/1.1 without Host.
    MissingHost,
    /// More than one Host field.
    DuplicateHost,
    /// A Host (or absolute-form authority) that is not `host[:port]`.
    BadHost,
    /// Content-Length repeated, empty, or not digits.
    ContentLength,
    /// Both Content-Length and Transfer-Encoding.
    ContentLengthWithTe,
    /// Transfer-Encoding other than exactly one `chunked`, or on HTTP/1.0.
    TransferEncoding,
    /// A Connection field naming a framing field (Content-Length, Transfer-Encoding, Host).
    ConnectionFraming,
    /// An Expect other than `100-continue`.
    Expectation,
    /// CONNECT: this is a reverse proxy, not a tunnel on request.
    Connect,
    /// A chunk size that is empty, not hex, or too large to count.
    ChunkSize,
    /// A chunk extension that is not `;name[=token|quoted-string]`.
    ChunkExtension,
    /// Chunk data not followed by CRLF.
    ChunkData,
    /// A chunk line (size + extensions) longer than the limit.
    ChunkLineTooLong,
    /// A trailer field that is not `name: value`.
    Trailer,
    /// A body larger than the limit.
    BodyTooLarge,
    /// A path with a `.` or `..` segment (or one written with `%2e`): a backend that resolves
    /// it would serve another path than the one the route matched (`/public/../admin`).
    /// Browsers and curl resolve them before sending; only crafted requests carry them.
    DotSegment,
}

impl RejectReason {
    /// The status the client gets.
    pub fn status(self) -> Status {
        use RejectReason::*;
        match self {
            UriTooLong => Status::UriTooLong,
            HeadTooLarge | TooManyHeaders => Status::HeaderFieldsTooLarge,
            Version => Status::VersionNotSupported,
            Expectation => Status::ExpectationFailed,
            Connect => Status::NotImplemented,
            BodyTooLarge => Status::PayloadTooLarge,
            _ => Status::BadRequest,
        }
    }
}

/// The statuses the proxy answers by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 400: the request is malformed or ambiguous.
    BadRequest,
    /// 404: no route matches.
    NotFound,
    /// 408: the head did not arrive in time.
    RequestTimeout,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 414: the request line is over the limit.
    UriTooLong,
    /// 417: an Expect we do not support.
    ExpectationFailed,
    /// 431: the head is over the size or field-count limit.
    HeaderFieldsTooLarge,
    /// 500: the matched route is misconfigured (Gateway API: no valid backendRef).
    InternalError,
    /// 501: a method the proxy does not forward (CONNECT).
    NotImplemented,
    /// 502: the backend failed or answered something unusable.
    BadGateway,
    /// 503: the matched route has no usable backend.
    Unavailable,
    /// 504: the backend did not answer in time.
    GatewayTimeout,
    /// 505: not HTTP/1.x.
    VersionNotSupported,
}

macro_rules! answers {
    ($($variant:ident => $code:literal $text:literal $len:literal,)*) => {
        impl Status {
            /// The numeric code.
            pub fn code(self) -> u16 {
                match self { $(Status::$variant => $code,)* }
            }
            /// The whole answer (head and a one-line body); `close` adds `connection: close`.
            pub fn answer(self, close: bool) -> &'static [u8] {
                match (self, close) {
                    $(
                        (Status::$variant, false) => concat!(
                            "HTTP/1.1 ", $code, " ", $text, "\r\ncontent-type: text/plain\r\n",
                            "content-length: ", $len, "\r\n\r\n", $code, " ", $text, "\n"
                        ).as_bytes(),
                        (Status::$variant, true) => concat!(
                            "HTTP/1.1 ", $code, " ", $text, "\r\ncontent-type: text/plain\r\n",
                            "content-length: ", $len, "\r\nconnection: close\r\n\r\n",
                            $code, " ", $text, "\n"
                        ).as_bytes(),
                    )*
                }
            }
        }
        impl Status {
            /// [`Self::answer`] without its body: the answer to a HEAD request (whose response
            /// never has one, whatever its Content-Length says).
            pub fn answer_to_head(self, close: bool) -> &'static [u8] {
                let answer = self.answer(close);
                let end = answer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(answer.len(), |i| i + 4);
                &answer[..end]
            }
        }
        #[cfg(test)]
        const ALL: &[Status] = &[$(Status::$variant,)*];
    };
}

// concat! takes only literals, so each body length is spelled out; `lengths_match_bodies` checks them.
answers! {
    BadRequest => 400 "Bad Request" 16,
    NotFound => 404 "Not Found" 14,
    RequestTimeout => 408 "Request Timeout" 20,
    PayloadTooLarge => 413 "Content Too Large" 22,
    UriTooLong => 414 "URI Too Long" 17,
    ExpectationFailed => 417 "Expectation Failed" 23,
    HeaderFieldsTooLarge => 431 "Request Header Fields Too Large" 36,
    InternalError => 500 "Internal Server Error" 26,
    NotImplemented => 501 "Not Implemented" 20,
    BadGateway => 502 "Bad Gateway" 16,
    Unavailable => 503 "Service Unavailable" 24,
    GatewayTimeout => 504 "Gateway Timeout" 20,
    VersionNotSupported => 505 "HTTP Version Not Supported" 31,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_bodies() {
        for &status in ALL {
            for close in [false, true] {
                let answer = status.answer(close);
                let text = std::str::from_utf8(answer).unwrap();
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(len, body.len(), "{status:?}");
                assert!(head.starts_with(&format!("HTTP/1.1 {} ", status.code())));
                assert_eq!(head.contains("connection: close"), close);
                let bodiless = status.answer_to_head(close);
                assert_eq!(bodiless, &answer[..head.len() + 4], "{status:?}");
            }
        }
    }
}
