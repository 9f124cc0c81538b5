//! Framing: a 4-byte big-endian length, then one protobuf message.
//!
//! [`ExtCodec`] is a [`tokio_util::codec`] `Decoder` and `Encoder` built on
//! [`LengthDelimitedCodec`], with prost on top. Frames larger than
//! [`MAX_FRAME_LEN`] (16 MiB) are rejected in both directions; an oversized
//! length prefix is refused as soon as its four bytes arrive, before anything
//! of that size is allocated.
//!
//! The host uses [`ClientCodec`] (encodes requests, decodes responses); the
//! extension side uses [`ServerCodec`].
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use exthost::codec::ClientCodec;
//! use exthost::proto::ExtRequest;
//! use tokio_util::codec::Encoder;
//!
//! let mut buf = BytesMut::new();
//! ClientCodec::new().encode(ExtRequest::register_tools(), &mut buf)?;
//! // Length 2, then field 2 (register_tools), wire type 2, length 0.
//! assert_eq!(&buf[..], b"\x00\x00\x00\x02\x12\x00");
//! # Ok::<(), exthost::codec::CodecError>(())
//! ```

use std::fmt;
use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::proto::{ExtRequest, ExtResponse};

/// The largest payload a frame may carry: 16 MiB.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame's length exceeds the maximum; nothing of that size was allocated.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The length the frame declared (or would have had).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not a valid protobuf message of the expected type.
    #[error("undecodable frame payload: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({received} of {expected} bytes received)")]
    Truncated {
        /// Bytes of the frame (header included) that were expected.
        expected: usize,
        /// Bytes that had arrived.
        received: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// A length-delimited protobuf codec that encodes `E` and decodes `D`.
pub struct ExtCodec<E, D> {
    inner: LengthDelimitedCodec,
    max: usize,
    /// The payload length of the frame whose header the inner codec has
    /// consumed, while it waits for the payload.
    in_frame: Option<usize>,
    _types: PhantomData<fn(E) -> D>,
}

/// The host's codec: encodes [`ExtRequest`], decodes [`ExtResponse`].
pub type ClientCodec = ExtCodec<ExtRequest, ExtResponse>;

/// The extension's codec: encodes [`ExtResponse`], decodes [`ExtRequest`].
pub type ServerCodec = ExtCodec<ExtResponse, ExtRequest>;

impl<E, D> ExtCodec<E, D> {
    /// A codec with the protocol's 16 MiB frame limit.
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A codec with another frame limit (mostly for tests).
    pub fn with_max_frame_len(max: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(HEADER_LEN)
            .max_frame_length(max)
            .new_codec();
        ExtCodec {
            inner,
            max,
            in_frame: None,
            _types: PhantomData,
        }
    }

    /// The frame limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max
    }
}

impl<E, D> Default for ExtCodec<E, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E, D> Clone for ExtCodec<E, D> {
    fn clone(&self) -> Self {
        Self::with_max_frame_len(self.max)
    }
}

impl<E, D> fmt::Debug for ExtCodec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtCodec")
            .field("max_frame_len", &self.max)
            .finish()
    }
}

impl<E, D: prost::Message + Default> Decoder for ExtCodec<E, D> {
    type Item = D;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        if self.in_frame.is_none() && src.len() >= HEADER_LEN {
            // Check the prefix ourselves so that the error names the length.
            let len = (&src[..HEADER_LEN]).get_u32() as usize;
            if len > self.max {
                return Err(CodecError::FrameTooLarge { len, max: self.max });
            }
            self.in_frame = Some(len);
        }
        match self.inner.decode(src)? {
            Some(frame) => {
                self.in_frame = None;
                Ok(Some(D::decode(frame.freeze())?))
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && self.in_frame.is_none() => Ok(None),
            None => Err(match self.in_frame {
                // The inner codec has consumed the header.
                Some(len) => CodecError::Truncated {
                    expected: HEADER_LEN + len,
                    received: HEADER_LEN + src.len(),
                },
                None => CodecError::Truncated {
                    expected: HEADER_LEN,
                    received: src.len(),
                },
            }),
        }
    }
}

impl<E: prost::Message, D> Encoder<E> for ExtCodec<E, D> {
    type Error = CodecError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, self.max, dst)
    }
}

/// One frame as [`TolerantCodec`] reads it: a message, or a frame that was
/// read whole (or skipped) but cannot be used.
#[derive(Debug)]
pub enum Frame<D> {
    /// A decoded message.
    Message(D),
    /// A well-framed frame that is unusable: over the size limit (reported
    /// as soon as its header arrives; its bytes are then skipped as they
    /// come, never stored) or not a valid message. The stream stays in
    /// step: the next frame is read as usual.
    Unusable(CodecError),
}

/// Where [`TolerantCodec`] is in the stream.
#[derive(Debug, Clone, Copy)]
enum Position {
    Header,
    Payload(usize),
    Skipping { len: usize, left: usize },
}

/// Like [`ExtCodec`], but a frame that is well framed and unusable (over
/// the limit, or undecodable) is a [`Frame::Unusable`] item instead of an
/// error that ends the stream: one bad message fails only itself. An
/// oversized frame is skipped as it arrives, never stored.
pub struct TolerantCodec<E, D> {
    max: usize,
    position: Position,
    _types: PhantomData<fn(E) -> D>,
}

/// The host's tolerant codec: encodes [`ExtRequest`], reads [`ExtResponse`]s.
pub type TolerantClientCodec = TolerantCodec<ExtRequest, ExtResponse>;

impl<E, D> TolerantCodec<E, D> {
    /// A codec with the frame limit `max` (the protocol's is [`MAX_FRAME_LEN`]).
    pub fn with_max_frame_len(max: usize) -> Self {
        TolerantCodec {
            max,
            position: Position::Header,
            _types: PhantomData,
        }
    }

    /// The frame limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max
    }
}

impl<E, D> fmt::Debug for TolerantCodec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TolerantCodec")
            .field("max_frame_len", &self.max)
            .field("position", &self.position)
            .finish()
    }
}

impl<E, D: prost::Message + Default> Decoder for TolerantCodec<E, D> {
    type Item = Frame<D>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<D>>, CodecError> {
        loop {
            match self.position {
                Position::Header => {
                    if src.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let len = src.get_u32() as usize;
                    if len > self.max {
                        // Refused from its header: the error comes at once;
                        // its bytes are skipped as they arrive.
                        self.position = Position::Skipping { len, left: len };
                        return Ok(Some(Frame::Unusable(CodecError::FrameTooLarge {
                            len,
                            max: self.max,
                        })));
                    }
                    self.position = Position::Payload(len);
                }
                Position::Payload(len) => {
                    if src.len() < len {
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    let frame = src.split_to(len).freeze();
                    self.position = Position::Header;
                    return Ok(Some(match D::decode(frame) {
                        Ok(msg) => Frame::Message(msg),
                        Err(e) => Frame::Unusable(CodecError::Decode(e)),
                    }));
                }
                Position::Skipping { len, left } => {
                    let n = left.min(src.len());
                    src.advance(n);
                    if n < left {
                        self.position = Position::Skipping {
                            len,
                            left: left - n,
                        };
                        return Ok(None);
                    }
                    self.position = Position::Header;
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame<D>>, CodecError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match self.position {
            Position::Header if src.is_empty() => Ok(None),
            Position::Header => Err(CodecError::Truncated {
                expected: HEADER_LEN,
                received: src.len(),
            }),
            Position::Payload(len) => Err(CodecError::Truncated {
                expected: HEADER_LEN + len,
                received: HEADER_LEN + src.len(),
            }),
            Position::Skipping { len, left } => Err(CodecError::Truncated {
                expected: HEADER_LEN + len,
                received: HEADER_LEN + len - left,
            }),
        }
    }
}

impl<E: prost::Message, D> Encoder<E> for TolerantCodec<E, D> {
    type Error = CodecError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, self.max, dst)
    }
}

/// Appends one frame holding `msg` to `dst`.
///
/// Same layout as [`LengthDelimitedCodec`]'s encoder, but encodes in place
/// instead of through an intermediate buffer.
pub(crate) fn encode_frame<M: prost::Message>(
    msg: &M,
    max: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u32(len as u32);
    msg.encode(dst)
        .expect("buffer was reserved to the message's encoded length");
    Ok(())
}
