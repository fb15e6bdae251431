//! Framing: a 4-byte big-endian length, then that many bytes of postcard.
//!
//! The length is checked against the limit before a byte of the body is
//! allocated, and the body grows only as its bytes arrive, so a peer
//! announcing a large frame costs nothing until it sends it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;

/// Most bytes of a frame body allocated before they arrive.
const INITIAL_BODY_CAPACITY: usize = 64 << 10;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Encodes `msg` as one frame (length prefix included).
///
/// ```
/// use store_protocol::{decode_body, encode_frame, Request};
/// let frame = encode_frame(&Request::Status, 1024).unwrap();
/// assert_eq!(&frame[..4], &[0, 0, 0, 1]);
/// assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), Request::Status);
/// ```
pub fn encode_frame<T: Serialize>(msg: &T, limit: u32) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; LENGTH_PREFIX_BYTES])
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = buf.len() - LENGTH_PREFIX_BYTES;
    if len > limit as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit,
        });
    }
    // `len <= limit <= u32::MAX`, so the cast is exact.
    buf[..LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Writes `msg` as one frame.
pub async fn write_frame<W, T>(writer: &mut W, msg: &T, limit: u32) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg, limit)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly before a frame
/// began; a stream ending inside a frame is [`FrameError::Truncated`].
pub async fn read_frame<R, T>(reader: &mut R, limit: u32) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_frame_len(reader, limit).await? {
        Some(len) => read_frame_body(reader, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix, checked against `limit`; `Ok(None)`
/// means the stream ended cleanly first. A caller that must budget memory
/// reserves the length before [`read_frame_body`].
pub async fn read_frame_len<R>(reader: &mut R, limit: u32) -> Result<Option<u32>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let got = read_full(reader, &mut prefix).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < LENGTH_PREFIX_BYTES {
        return Err(FrameError::Truncated {
            expected: LENGTH_PREFIX_BYTES as u64,
            got: got as u64,
        });
    }
    let len = u32::from_be_bytes(prefix);
    if len > limit {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            limit,
        });
    }
    Ok(Some(len))
}

/// Reads a frame body of `len` bytes (from [`read_frame_len`]) and decodes it.
pub async fn read_frame_body<R, T>(reader: &mut R, len: u32) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    decode_body(&read_frame_bytes(reader, len).await?)
}

/// Reads a frame body of `len` bytes (from [`read_frame_len`]) undecoded.
pub async fn read_frame_bytes<R>(reader: &mut R, len: u32) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    // Grown as bytes arrive: a peer that announces a large frame and sends
    // little holds little.
    let mut body = Vec::with_capacity((len as usize).min(INITIAL_BODY_CAPACITY));
    let got = (&mut *reader)
        .take(u64::from(len))
        .read_to_end(&mut body)
        .await?;
    if got < len as usize {
        return Err(FrameError::Truncated {
            expected: u64::from(len),
            got: got as u64,
        });
    }
    Ok(body)
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
