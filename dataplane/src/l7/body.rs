//! Body framing: Content-Length, chunked (a streaming state machine that checks every byte of the
//! framing, RFC 9112 §7.1) and read-until-close (responses only).
//!
//! Decoders never buffer: each call looks at the bytes it is given, says how many it consumed and
//! where the data bytes among them are, and keeps only a few integers between calls.

use super::errors::RejectReason;
use super::head::{is_tchar, Limits};
use std::ops::Range;

/// What one decoding step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used (framing and data).
    pub consumed: usize,
    /// Where the data bytes are in the input (an empty range when none).
    pub data: Range<usize>,
    /// The body is complete; bytes after `consumed` belong to the next message.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    SizeStart,
    Size,
    SizeBws,
    ExtPreName,
    ExtName,
    ExtPostName,
    ExtPreValue,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    ExtPostValue,
    LineLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked decoder: size lines, extensions and the trailer section are checked and passed
/// over; only the data bytes are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    /// Hex digits read in the current size.
    digits: u8,
    /// Size of the current chunk, then what is left of it.
    remaining: u64,
    /// Bytes of the current chunk line or of the trailer section so far.
    line: usize,
    /// Data bytes of every chunk so far.
    total: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            digits: 0,
            remaining: 0,
            line: 0,
            total: 0,
        }
    }
}

fn value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    /// True once the last chunk and the trailer section are read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing from `input` up to and including the next run of data bytes.
    pub fn decode(&mut self, input: &[u8], limits: &Limits) -> Result<Decoded, RejectReason> {
        use State::*;
        let mut i = 0;
        while i < input.len() {
            if self.state == Data {
                let n =
                    (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = DataCr;
                }
                return Ok(Decoded {
                    consumed: i + n,
                    data: i..i + n,
                    done: false,
                });
            }
            if self.state == Done {
                break;
            }
            let b = input[i];
            i += 1;
            match self.state {
                SizeStart | Size | SizeBws | ExtPreName | ExtName | ExtPostName | ExtPreValue
                | ExtToken | ExtQuoted | ExtQuotedEscape | ExtPostValue => {
                    self.line += 1;
                    if self.line > limits.max_chunk_line {
                        return Err(RejectReason::ChunkLineTooLong);
                    }
                }
                TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                    self.line += 1;
                    if self.line > limits.max_head {
                        return Err(RejectReason::HeadTooLarge);
                    }
                }
                _ => {}
            }
            self.state = match (self.state, b) {
                (SizeStart | Size, _) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(RejectReason::ChunkSize);
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.remaining = (self.remaining << 4) | u64::from(digit);
                    Size
                }
                (SizeStart, _) => return Err(RejectReason::ChunkSize),
                (Size, b';') | (SizeBws, b';') => ExtPreName,
                (Size | SizeBws, b' ' | b'\t') => SizeBws,
                (Size, b'\r') => LineLf,
                (SizeBws, _) => return Err(RejectReason::ChunkExtension),
                (Size, b'\n') => return Err(RejectReason::BareLf),
                (Size, _) => return Err(RejectReason::ChunkSize),
                (ExtPreName, b' ' | b'\t') => ExtPreName,
                (ExtPreName, _) if is_tchar(b) => ExtName,
                (ExtName, _) if is_tchar(b) => ExtName,
                (ExtName | ExtPostName, b' ' | b'\t') => ExtPostName,
                (ExtName | ExtPostName, b'=') => ExtPreValue,
                (ExtName | ExtPostName | ExtToken | ExtPostValue, b';') => ExtPreName,
                (ExtName | ExtPostName | ExtToken | ExtPostValue, b'\r') => LineLf,
                (ExtPreValue, b' ' | b'\t') => ExtPreValue,
                (ExtPreValue, b'"') => ExtQuoted,
                (ExtPreValue | ExtToken, _) if is_tchar(b) => ExtToken,
                (ExtToken | ExtPostValue, b' ' | b'\t') => ExtPostValue,
                (ExtQuoted, b'"') => ExtPostValue,
                (ExtQuoted, b'\\') => ExtQuotedEscape,
                (ExtQuoted, _) if value_byte(b) => ExtQuoted,
                (ExtQuotedEscape, _) if value_byte(b) => ExtQuoted,
                (
                    ExtPreName | ExtName | ExtPostName | ExtPreValue | ExtToken | ExtQuoted
                    | ExtQuotedEscape | ExtPostValue,
                    _,
                ) => return Err(RejectReason::ChunkExtension),
                (LineLf, b'\n') => {
                    self.line = 0;
                    self.digits = 0;
                    if self.remaining == 0 {
                        TrailerStart
                    } else {
                        self.total = self.total.saturating_add(self.remaining);
                        if self.total > limits.max_body {
                            return Err(RejectReason::BodyTooLarge);
                        }
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataCr, _) => return Err(RejectReason::ChunkData),
                (DataLf, b'\n') => SizeStart,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                (LineLf | DataLf | TrailerLf | EndLf, _) => return Err(RejectReason::BareCr),
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b' ' | b'\t') => return Err(RejectReason::ObsFold),
                (TrailerStart | TrailerValue, b'\n') => return Err(RejectReason::BareLf),
                (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
                (TrailerName, b':') => TrailerValue,
                (TrailerValue, b'\r') => TrailerLf,
                (TrailerValue, _) if value_byte(b) => TrailerValue,
                (TrailerStart | TrailerName | TrailerValue, _) => {
                    return Err(RejectReason::Trailer)
                }
                (Data | Done, _) => unreachable!("handled before the byte is read"),
            };
        }
        Ok(Decoded {
            consumed: i,
            data: i..i,
            done: self.state == Done,
        })
    }
}

/// How a message body ends, and how much of it is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyReader {
    /// This many bytes are left.
    Length(u64),
    /// Chunked.
    Chunked(ChunkedDecoder),
    /// Everything until the peer closes (responses only).
    UntilClose,
    /// Nothing (left) to read.
    Done,
}

impl BodyReader {
    /// True when the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// One decoding step over `input` (see [`ChunkedDecoder::decode`]).
    pub fn decode(&mut self, input: &[u8], limits: &Limits) -> Result<Decoded, RejectReason> {
        let decoded = match self {
            BodyReader::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Decoded {
                    consumed: n,
                    data: 0..n,
                    done: *left == 0,
                }
            }
            BodyReader::Chunked(decoder) => decoder.decode(input, limits)?,
            BodyReader::UntilClose => Decoded {
                consumed: input.len(),
                data: 0..input.len(),
                done: false,
            },
            BodyReader::Done => Decoded {
                consumed: 0,
                data: 0..0,
                done: true,
            },
        };
        if decoded.done {
            *self = BodyReader::Done;
        }
        Ok(decoded)
    }

    /// Runs a copy of this reader over `input`: the first framing error in bytes already
    /// received, without changing any state (so a bad body is refused before anything is sent).
    pub fn check_ahead(&self, input: &[u8], limits: &Limits) -> Result<(), RejectReason> {
        let mut copy = *self;
        let mut rest = input;
        while !rest.is_empty() && !copy.is_done() {
            let step = copy.decode(rest, limits)?;
            if step.consumed == 0 {
                break;
            }
            rest = &rest[step.consumed..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns the data and what was consumed.
    fn run(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), RejectReason> {
        let limits = Limits::default();
        let mut reader = BodyReader::Chunked(ChunkedDecoder::default());
        let (mut data, mut used) = (Vec::new(), 0);
        let mut pending: &[u8] = &[];
        let mut fed = 0;
        loop {
            if pending.is_empty() {
                if fed >= input.len() {
                    return Ok((data, used, false));
                }
                let end = (fed + piece).min(input.len());
                pending = &input[fed..end];
                fed = end;
            }
            let step = reader.decode(pending, &limits)?;
            data.extend_from_slice(&pending[step.data.clone()]);
            used += step.consumed;
            pending = &pending[step.consumed..];
            if step.done {
                return Ok((data, used, true));
            }
        }
    }

    #[test]
    fn chunked_any_split() {
        let body = b"5;a=b;c=\"q\\\"x\"\r\nhello\r\n6 ;e\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (data, used, done) = run(body, piece).unwrap();
            assert_eq!(data, b"hello world");
            assert!(done);
            assert_eq!(used, body.len() - 4);
        }
    }

    #[test]
    fn chunked_refusals() {
        let cases: &[(&[u8], RejectReason)] = &[
            (b" 0\r\n\r\n", RejectReason::ChunkSize),
            (b"a \r\n", RejectReason::ChunkExtension),
            (b"2;\r\n", RejectReason::ChunkExtension),
            (b"2;a=\"b\r\n", RejectReason::ChunkExtension),
            (b"10000000000000000\r\n", RejectReason::ChunkSize),
            (b"3\r\nabcd\r\n", RejectReason::ChunkData),
            (b"0\n\r\n", RejectReason::BareLf),
            (b"1\r\nZ\n0\r\n\r\n", RejectReason::ChunkData),
            (b"0\r\nBad Name: x\r\n\r\n", RejectReason::Trailer),
            (b"5\r\r;\r\n", RejectReason::BareCr),
        ];
        for (input, reason) in cases {
            assert_eq!(
                run(input, 64).unwrap_err(),
                *reason,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest::proptest! {
        /// Any bytes, split anywhere: no panic, and the same data, end and error as in one piece.
        #[test]
        fn chunked_any_bytes_any_split(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            valid_prefix in proptest::prelude::any::<bool>(),
            piece in 1usize..40,
        ) {
            let input = if valid_prefix { [&b"4;a=\"b\"\r\nwxyz\r\n"[..], &input].concat() } else { input };
            let whole = run(&input, input.len().max(1));
            proptest::prop_assert_eq!(run(&input, piece), whole);
        }
    }

    #[test]
    fn length_reader_stops_at_the_end() {
        let mut reader = BodyReader::Length(3);
        let step = reader.decode(b"abcdef", &Limits::default()).unwrap();
        assert_eq!(
            step,
            Decoded {
                consumed: 3,
                data: 0..3,
                done: true
            }
        );
        assert!(reader.is_done());
    }

    #[test]
    fn check_ahead_leaves_state_alone() {
        let reader = BodyReader::Chunked(ChunkedDecoder::default());
        assert_eq!(reader.check_ahead(b"5\r\nhel", &Limits::default()), Ok(()));
        assert_eq!(
            reader.check_ahead(b"zz\r\n", &Limits::default()),
            Err(RejectReason::ChunkSize)
        );
        assert_eq!(reader, BodyReader::Chunked(ChunkedDecoder::default()));
    }
}
