//! # store-protocol: Zeolite's wire format
//!
//! Everything a Zeolite client and server say to each other: the message types
//! ([`SessionRequest`], [`SessionEvent`], [`Request`], [`Response`]), the
//! framing ([`read_frame`], [`write_frame`]), the [`Limits`], the typed
//! [`WireError`]s and the [`PROTOCOL_VERSION`]. Start with [`Request`].
//!
//! ## Transport
//!
//! QUIC with TLS 1.3 and mutual authentication, ALPN [`ALPN`] (`zeolite/1`),
//! default port [`DEFAULT_PORT`] (7447/udp).
//!
//! ## Streams
//!
//! * **Session stream**: the first bidirectional stream a client opens. The
//!   client sends [`SessionRequest::Hello`]; the server answers
//!   [`SessionEvent::Welcome`] or [`SessionEvent::Refused`] (then closes the
//!   stream). The stream stays open for the session's life and carries
//!   `Ping`s one way and, in TID order, `Invalidate`s and `Pong`s the other,
//!   so a pong always arrives after every invalidation it covers. Both sides
//!   give it the highest send priority.
//! * **Request streams**: one bidirectional stream per request. The client
//!   writes one [`Request`] frame and finishes its side; the server writes one
//!   [`Response`] frame and finishes. A request stream opened before the
//!   session is welcomed is answered with [`WireError::NoSession`].
//!   The exceptions are [`Request::Backup`], answered with a sequence of
//!   [`backup::BackupPiece`] frames (see [`backup`]), and
//!   [`Request::Subscribe`], answered with [`feed::FeedEvent`] frames for
//!   as long as the client reads (see [`feed`]).
//!
//! ## Frames, byte by byte
//!
//! ```text
//! +--------+--------+--------+--------+=============================+
//! |  length (u32, big-endian)         |  body: `length` bytes       |
//! +--------+--------+--------+--------+=============================+
//! ```
//!
//! The receiver checks `length` against `max_frame_bytes` (default 8 MiB)
//! **before** allocating; an oversize frame is refused with
//! [`WireError::TooLarge`] and the stream is closed. The body is the
//! [postcard](https://docs.rs/postcard) encoding of one message:
//!
//! * unsigned integers (`u32`, `u64`, `u128`) are LEB128 varints: 7 bits per
//!   byte, least significant group first, high bit set on every byte but the
//!   last (`300` → `ac 02`); `i64` is zigzag-encoded first (`-1` → `01`);
//! * byte strings (keys, values) are a varint length, then the raw bytes;
//! * a `Vec` is a varint count, then its elements;
//! * an `Option` is `00` (none) or `01` then the value;
//! * an enum is its variant index as a varint (in declaration order, from 0),
//!   then the variant's fields in order; a struct is its fields in order,
//!   with no names or tags;
//! * `bool` is `00` or `01`.
//!
//! For example `Request::Get { key: b"k" }` is the frame
//! `00 00 00 03 | 00 01 6b`: length 3, variant 0 (`Get`), a 1-byte key `k`.
//! A body with trailing bytes after the message is malformed.
//!
//! ## Versioning
//!
//! [`Hello::protocol_version`] must equal [`PROTOCOL_VERSION`]; otherwise the
//! server refuses with [`WireError::UnsupportedVersion`]. Any change to the
//! encoding of an existing message bumps the version; variants are only ever
//! appended.
//!
//! ## Transactions
//!
//! A [`CommitRequest`] carries a [`TxnId`], a read set of `(key, serial)` and
//! writes ([`Write::Put`], [`Write::Delete`], [`Write::Incr`],
//! [`Write::Append`]), plus a 128-bit [`content_digest`] the server checks.
//! The server either applies all writes under one new [`Tid`] or none.

pub mod backup;
mod error;
pub mod feed;
mod frame;
#[cfg(feature = "tls")]
pub mod identity;
mod ids;
mod limits;
mod message;
pub mod peer;
#[cfg(feature = "tls")]
pub mod pem;

pub use error::{BackupError, FrameError, LimitKind, WireError};
pub use frame::{
    decode_body, encode_frame, read_frame, read_frame_body, read_frame_bytes, read_frame_len,
    write_frame, LENGTH_PREFIX_BYTES,
};
#[cfg(feature = "tls")]
pub use identity::{client_id_space, Identity};
pub use ids::{space_of, Epoch, ParseTxnIdError, Role, Tid, TxnId};
pub use limits::{
    Limits, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_OPS_PER_TXN,
    DEFAULT_MAX_TXN_BYTES, DEFAULT_MAX_VALUE_BYTES,
};
pub use message::{
    content_digest, CommitRequest, Committed, Entry, Hello, PairStatus, Pong, ReadCheck, Request,
    Response, ScanRequest, SessionEvent, SessionRequest, StatusInfo, Versioned, Welcome, Write,
    WriteResult, COMMIT_ENVELOPE_BYTES, OP_ENVELOPE_BYTES,
};

/// The protocol version this build speaks, sent in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The TLS application protocol name.
pub const ALPN: &[u8] = b"zeolite/1";

/// Pings closer together than this are dropped unanswered by the server, so
/// a client never sends them closer (DESIGN §4).
pub const MIN_PING_SPACING: std::time::Duration = std::time::Duration::from_millis(250);

/// The default UDP port.
pub const DEFAULT_PORT: u16 = 7447;
