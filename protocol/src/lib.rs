//! The gst-iroh wire format, versions 1 and 2 (see `gst-iroh/PROTOCOL.md`), the share
//! [`ticket`], and the MPEG-TS program tables a host repeats for late joiners ([`psi_cache`]).
//!
//! Pure: no GStreamer, no tokio, no I/O, so the elements, the launcher and a browser viewer
//! (wasm32) share it, and it is fuzzed on its own (`fuzz/`). Every decoder takes a byte slice
//! and answers "here is one item and how many bytes it used", "need more bytes" or a typed
//! error, so the network code stays a thin loop.

pub mod psi_cache;
pub mod ticket;

use thiserror::Error;

/// Protocol version spoken by this build. The ALPN carries it.
pub const VERSION: u32 = 2;
/// ALPN of the media protocol, version [`VERSION`]: renditions (a viewer is switched between
/// encodings of the same content at GOP boundaries).
pub const ALPN: &[u8] = b"gst-iroh/2";
/// ALPN of version 1, still served (the top rendition only, see `PROTOCOL.md`).
pub const ALPN_V1: &[u8] = b"gst-iroh/1";
/// ALPN of the version probe: the host closes such a connection at once with its protocol
/// version as the close code, so a viewer that failed the handshake can say which version the
/// host speaks instead of "handshake failed".
pub const ALPN_VERSION_PROBE: &[u8] = b"gst-iroh/version";

/// QUIC settings both ends of a media connection use (the elements and the browser viewer).
pub mod quic {
    use std::time::Duration;

    /// Concurrent uni streams a peer may open: room for many GOP streams in flight.
    pub const MAX_UNI_STREAMS: u32 = 1024;
    /// Keep-alives, so a dead path is noticed in seconds...
    pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
    /// ...and the connection given up after this long without a packet.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Largest control message body we accept.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;
/// Largest frame payload we accept (an uncompressed 4K RGBA frame is 33 MB; encoded media is
/// far below this).
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;
/// Largest caps string in a GOP header.
pub const MAX_CAPS_LEN: usize = 64 * 1024;
/// Largest viewer name in a hello.
pub const MAX_NAME_LEN: usize = 255;
/// Length of the access secret carried in the ticket.
pub const SECRET_LEN: usize = 16;
/// First byte of every GOP stream (version 1).
pub const GOP_MAGIC: u8 = b'G';
/// First byte of every GOP stream of version 2: the header also names the rendition.
pub const GOP_MAGIC_V2: u8 = b'R';
/// Most renditions a host announces.
pub const MAX_RENDITIONS: usize = 16;

/// Why a decode failed. All of these mean the peer is broken or hostile: close it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("variable-length integer is longer than 10 bytes")]
    VarintOverflow,
    #[error("variable-length integer is not in its shortest form")]
    VarintNonCanonical,
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLong { what: &'static str, len: u64, max: usize },
    #[error("unknown control message type {0}")]
    UnknownMessage(u8),
    #[error("GOP stream does not start with the GOP magic byte")]
    BadMagic,
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("unknown frame flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("{0} has {1} trailing bytes")]
    Trailing(&'static str, usize),
}

/// Result of a decoder: `Ok(None)` means "incomplete, feed more bytes".
pub type Decoded<T> = Result<Option<(T, usize)>, ProtocolError>;

/// Close codes on the QUIC connection (application error codes). A viewer maps them to the
/// message a person reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal end (viewer left, host stopped or reached end of stream).
    Normal = 0,
    /// `max-viewers` reached.
    HostFull = 1,
    /// The secret in the ticket does not match.
    BadSecret = 2,
    /// The ticket's secret was revoked by the host.
    Revoked = 3,
    /// The host kicked this viewer.
    Kicked = 4,
    /// The viewer could not keep up for too long.
    Slow = 5,
    /// The peer broke the protocol.
    Protocol = 6,
    /// The host element is shutting down.
    HostStopped = 7,
}

impl CloseCode {
    /// Maps a raw close code back; unknown codes read as protocol errors.
    pub fn from_u64(code: u64) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::HostFull,
            2 => Self::BadSecret,
            3 => Self::Revoked,
            4 => Self::Kicked,
            5 => Self::Slow,
            7 => Self::HostStopped,
            _ => Self::Protocol,
        }
    }

    /// Short reason string used in close frames, signals and stats.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "closed",
            Self::HostFull => "host is full",
            Self::BadSecret => "wrong secret",
            Self::Revoked => "revoked",
            Self::Kicked => "kicked",
            Self::Slow => "slow",
            Self::Protocol => "protocol error",
            Self::HostStopped => "host stopped",
        }
    }

    /// What a viewer tells a person when the host closes its connection with this code, and
    /// whether dialling again may help (the host stopped, or dropped this viewer as slow).
    /// One text for every viewer (the elements, the browser page).
    pub fn viewer_text(self, reason: &str) -> (String, bool) {
        let (text, retry) = match self {
            Self::HostFull => ("host is full: it already has its maximum number of viewers", false),
            Self::BadSecret => (
                "ticket is not valid: the host does not accept its secret (ask the host for the current ticket)",
                false,
            ),
            Self::Revoked => ("this ticket was revoked: ask the host for a new one", false),
            Self::Kicked => ("the host removed this viewer from the share", false),
            Self::Slow => ("the host dropped this viewer as too slow", true),
            Self::Protocol => return (format!("protocol error reported by the host: {reason}"), false),
            Self::Normal | Self::HostStopped => ("the host stopped sharing", true),
        };
        (text.to_string(), retry)
    }
}

// ---------------------------------------------------------------------------------------------
// varints (LEB128, at most 10 bytes for a u64)

/// Appends `v` as LEB128.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a LEB128 u64.
pub fn get_varint(buf: &[u8]) -> Decoded<u64> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i == 9 && b > 1 {
            return Err(ProtocolError::VarintOverflow);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // One encoding per value: a trailing zero group could be dropped.
            if b == 0 && i > 0 {
                return Err(ProtocolError::VarintNonCanonical);
            }
            return Ok(Some((v, i + 1)));
        }
        if i == 9 {
            return Err(ProtocolError::VarintOverflow);
        }
    }
    Ok(None)
}

/// A cursor over a byte slice that reads varints and length-prefixed fields; `None` = short.
/// Shared by the wire format and the ticket.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    pub(crate) fn varint(&mut self) -> Result<Option<u64>, ProtocolError> {
        Ok(get_varint(&self.buf[self.pos..])?.map(|(v, n)| {
            self.pos += n;
            v
        }))
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    /// A varint length (checked against `max`) followed by that many bytes.
    pub(crate) fn prefixed(&mut self, what: &'static str, max: usize) -> Result<Option<&'a [u8]>, ProtocolError> {
        let Some(len) = self.varint()? else {
            return Ok(None);
        };
        if len > max as u64 {
            return Err(ProtocolError::TooLong { what, len, max });
        }
        Ok(self.bytes(len as usize))
    }
    pub(crate) fn string(&mut self, what: &'static str, max: usize) -> Result<Option<String>, ProtocolError> {
        match self.prefixed(what, max)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| ProtocolError::BadUtf8(what)),
        }
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------------------------------------
// control stream

/// Messages on the control bi-stream that the viewer opens right after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Viewer → host, first message: the ticket's secret and a display name.
    Hello { secret: [u8; SECRET_LEN], name: String },
    /// Host → viewer: admitted; GOP streams follow. `viewer_id` is the host's number for this
    /// viewer (from 1; 0 = the host does not number its viewers): see [`viewer_label`].
    Welcome { viewer_id: u64 },
    /// Host → viewer: refused or removed, with a code and a message for a person.
    /// The connection is closed with the same code right after.
    Refuse { code: u32, reason: String },
    /// Host → viewer: the stream ended (EOS); no more GOPs will come.
    End,
    /// Viewer → host, a few times a second: the newest GOP it received and the capture time
    /// (host clock) of the newest frame it handed downstream. The host measures the viewer's
    /// real lag behind live from this, QUIC buffers included.
    Progress { seq: u64, capture_unix_ns: u64 },
    /// Viewer → host: something downstream of the viewer wants a keyframe (a local player
    /// joined); the host asks its encoder for one, rate-limited.
    KeyframeRequest,
    /// Viewer → host, version 2's hello: [`Control::Hello`] plus the most this viewer wants to
    /// receive, in kbit/s (0: no ceiling). The host serves the highest rendition at or below it.
    Hello2 {
        secret: [u8; SECRET_LEN],
        name: String,
        max_kbps: u32,
    },
    /// Host → viewer, version 2's welcome: the viewer id and the host's renditions, top first.
    Welcome2 {
        viewer_id: u64,
        renditions: Vec<RenditionInfo>,
    },
    /// Viewer → host: probe bytes received so far on the host's probe streams (cumulative).
    ProbeReport { bytes: u64 },
    /// Viewer → host, any time after the welcome: a new ceiling in kbit/s (0: none), as in
    /// [`Control::Hello2`]; the host applies it at the viewer's next GOP boundary.
    Ceiling { max_kbps: u32 },
}

/// One rendition as announced in [`Control::Welcome2`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionInfo {
    /// Name for people and stats ("1080p", "low", ...).
    pub name: String,
    /// Nominal bitrate, kbit/s (0: unknown).
    pub kbps: u32,
}

const MSG_HELLO: u8 = 1;
const MSG_WELCOME: u8 = 2;
const MSG_REFUSE: u8 = 3;
const MSG_END: u8 = 4;
const MSG_PROGRESS: u8 = 5;
const MSG_KEYFRAME_REQUEST: u8 = 6;
const MSG_HELLO2: u8 = 7;
const MSG_WELCOME2: u8 = 8;
const MSG_PROBE_REPORT: u8 = 9;
const MSG_CEILING: u8 = 10;

impl Control {
    /// Encodes as `varint body length | type | body`.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let ty = match self {
            Control::Hello { secret, name } => {
                body.extend_from_slice(secret);
                put_bytes(&mut body, name.as_bytes());
                MSG_HELLO
            }
            Control::Welcome { viewer_id } => {
                put_varint(&mut body, *viewer_id);
                MSG_WELCOME
            }
            Control::Refuse { code, reason } => {
                put_varint(&mut body, u64::from(*code));
                put_bytes(&mut body, reason.as_bytes());
                MSG_REFUSE
            }
            Control::End => MSG_END,
            Control::Progress { seq, capture_unix_ns } => {
                put_varint(&mut body, *seq);
                put_varint(&mut body, *capture_unix_ns);
                MSG_PROGRESS
            }
            Control::KeyframeRequest => MSG_KEYFRAME_REQUEST,
            Control::Hello2 { secret, name, max_kbps } => {
                body.extend_from_slice(secret);
                put_bytes(&mut body, name.as_bytes());
                put_varint(&mut body, u64::from(*max_kbps));
                MSG_HELLO2
            }
            Control::Welcome2 { viewer_id, renditions } => {
                put_varint(&mut body, *viewer_id);
                put_varint(&mut body, renditions.len() as u64);
                for r in renditions {
                    put_bytes(&mut body, r.name.as_bytes());
                    put_varint(&mut body, u64::from(r.kbps));
                }
                MSG_WELCOME2
            }
            Control::ProbeReport { bytes } => {
                put_varint(&mut body, *bytes);
                MSG_PROBE_REPORT
            }
            Control::Ceiling { max_kbps } => {
                put_varint(&mut body, u64::from(*max_kbps));
                MSG_CEILING
            }
        };
        let mut out = Vec::with_capacity(body.len() + 4);
        put_varint(&mut out, body.len() as u64 + 1);
        out.push(ty);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes one message from the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<Control> {
        let mut r = Reader::new(buf);
        let len = need!(r.varint()?);
        if len == 0 || len > MAX_CONTROL_LEN as u64 {
            return Err(ProtocolError::TooLong {
                what: "control message",
                len,
                max: MAX_CONTROL_LEN,
            });
        }
        let frame = need!(r.bytes(len as usize));
        let used = r.pos;
        let mut b = Reader::new(&frame[1..]);
        // Inside a complete frame, running short is an error, not "need more".
        let short = || ProtocolError::TooLong {
            what: "control message field",
            len,
            max: MAX_CONTROL_LEN,
        };
        let msg = match frame[0] {
            MSG_HELLO => {
                let secret: [u8; SECRET_LEN] = b.bytes(SECRET_LEN).ok_or_else(short)?.try_into().unwrap();
                let name = b.string("viewer name", MAX_NAME_LEN)?.ok_or_else(short)?;
                Control::Hello { secret, name }
            }
            MSG_WELCOME => Control::Welcome {
                viewer_id: b.varint()?.ok_or_else(short)?,
            },
            MSG_REFUSE => {
                let code = b.varint()?.ok_or_else(short)?;
                let reason = b.string("refusal reason", MAX_CONTROL_LEN)?.ok_or_else(short)?;
                Control::Refuse {
                    code: u32_field("refusal code", code)?,
                    reason,
                }
            }
            MSG_END => Control::End,
            MSG_PROGRESS => Control::Progress {
                seq: b.varint()?.ok_or_else(short)?,
                capture_unix_ns: b.varint()?.ok_or_else(short)?,
            },
            MSG_KEYFRAME_REQUEST => Control::KeyframeRequest,
            MSG_HELLO2 => {
                let secret: [u8; SECRET_LEN] = b.bytes(SECRET_LEN).ok_or_else(short)?.try_into().unwrap();
                let name = b.string("viewer name", MAX_NAME_LEN)?.ok_or_else(short)?;
                let max_kbps = u32_field("bitrate ceiling", b.varint()?.ok_or_else(short)?)?;
                Control::Hello2 { secret, name, max_kbps }
            }
            MSG_WELCOME2 => decode_welcome2(&mut b, short)?,
            MSG_PROBE_REPORT => Control::ProbeReport {
                bytes: b.varint()?.ok_or_else(short)?,
            },
            MSG_CEILING => Control::Ceiling {
                max_kbps: u32_field("bitrate ceiling", b.varint()?.ok_or_else(short)?)?,
            },
            other => return Err(ProtocolError::UnknownMessage(other)),
        };
        if b.pos != b.buf.len() {
            return Err(ProtocolError::Trailing("control message", b.buf.len() - b.pos));
        }
        Ok(Some((msg, used)))
    }
}

fn u32_field(what: &'static str, v: u64) -> Result<u32, ProtocolError> {
    u32::try_from(v).map_err(|_| ProtocolError::TooLong {
        what,
        len: v,
        max: u32::MAX as usize,
    })
}

fn decode_welcome2(b: &mut Reader<'_>, short: impl Fn() -> ProtocolError + Copy) -> Result<Control, ProtocolError> {
    let viewer_id = b.varint()?.ok_or_else(short)?;
    let n = b.varint()?.ok_or_else(short)?;
    if n > MAX_RENDITIONS as u64 {
        return Err(ProtocolError::TooLong {
            what: "rendition list",
            len: n,
            max: MAX_RENDITIONS,
        });
    }
    let mut renditions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = b.string("rendition name", MAX_NAME_LEN)?.ok_or_else(short)?;
        let kbps = u32_field("rendition bitrate", b.varint()?.ok_or_else(short)?)?;
        renditions.push(RenditionInfo { name, kbps });
    }
    Ok(Control::Welcome2 { viewer_id, renditions })
}

// ---------------------------------------------------------------------------------------------
// GOP streams

/// The header that opens every GOP uni stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GopHeader {
    /// GOP sequence number, increasing by one per GOP the host cuts. A gap between two GOPs a
    /// viewer receives means GOPs were skipped for it.
    pub seq: u64,
    /// The caps of the media in this GOP (`gst::Caps` serialized as a string).
    pub caps: String,
    /// Version 2: the index of this GOP's rendition in the `Welcome2` list (None: version 1,
    /// which has one rendition).
    pub rendition: Option<u32>,
}

impl GopHeader {
    /// Encodes as `'G' | varint seq | varint caps length | caps` (version 1), or with magic
    /// `'R'` and a trailing `varint rendition` (version 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.caps.len() + 14);
        out.push(if self.rendition.is_some() {
            GOP_MAGIC_V2
        } else {
            GOP_MAGIC
        });
        put_varint(&mut out, self.seq);
        put_bytes(&mut out, self.caps.as_bytes());
        if let Some(r) = self.rendition {
            put_varint(&mut out, u64::from(r));
        }
        out
    }

    /// Decodes the header (either version) from the front of a GOP stream.
    pub fn decode(buf: &[u8]) -> Decoded<GopHeader> {
        let mut r = Reader::new(buf);
        let v2 = match need!(r.u8()) {
            GOP_MAGIC => false,
            GOP_MAGIC_V2 => true,
            _ => return Err(ProtocolError::BadMagic),
        };
        let seq = need!(r.varint()?);
        let caps = need!(r.string("caps", MAX_CAPS_LEN)?);
        let rendition = match v2 {
            true => Some(u32_field("rendition", need!(r.varint()?))?),
            false => None,
        };
        Ok(Some((GopHeader { seq, caps, rendition }, r.pos)))
    }
}

/// Per-frame flags.
pub mod flags {
    /// Not a keyframe (GStreamer DELTA_UNIT).
    pub const DELTA: u8 = 1 << 0;
    /// Stream header (GStreamer HEADER), e.g. cached PAT/PMT or caps streamheader.
    pub const HEADER: u8 = 1 << 1;
    /// GStreamer DISCONT as the host saw it.
    pub const DISCONT: u8 = 1 << 2;
    /// Followed by a PTS.
    pub const PTS: u8 = 1 << 3;
    /// Followed by a DTS.
    pub const DTS: u8 = 1 << 4;
    /// Followed by a duration.
    pub const DURATION: u8 = 1 << 5;
    /// Followed by the capture wall-clock time (ns since the Unix epoch).
    pub const CAPTURE: u8 = 1 << 6;
    /// Every bit this version knows.
    pub const KNOWN: u8 = 0x7f;
}

/// Timing and flags of one frame (a buffer, or a run of buffers the host coalesced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// [`flags`] bits other than the presence bits (those are derived from the options).
    pub flags: u8,
    /// Presentation timestamp, ns of host running time.
    pub pts: Option<u64>,
    /// Decoding timestamp, ns of host running time.
    pub dts: Option<u64>,
    /// Duration in ns.
    pub duration: Option<u64>,
    /// Capture wall-clock time, ns since the Unix epoch.
    pub capture_unix_ns: Option<u64>,
}

impl FrameMeta {
    /// True for a keyframe (no DELTA flag).
    pub fn is_keyframe(&self) -> bool {
        self.flags & flags::DELTA == 0
    }

    /// Appends the frame header for a payload of `len` bytes.
    pub fn encode_header(&self, len: usize, out: &mut Vec<u8>) {
        let mut f = self.flags & (flags::DELTA | flags::HEADER | flags::DISCONT);
        let fields = [
            (flags::PTS, self.pts),
            (flags::DTS, self.dts),
            (flags::DURATION, self.duration),
            (flags::CAPTURE, self.capture_unix_ns),
        ];
        for (bit, v) in fields {
            if v.is_some() {
                f |= bit;
            }
        }
        out.push(f);
        for (_, v) in fields {
            if let Some(v) = v {
                put_varint(out, v);
            }
        }
        put_varint(out, len as u64);
    }

    /// Decodes a frame header; returns the meta and the payload length.
    pub fn decode_header(buf: &[u8]) -> Decoded<(FrameMeta, usize)> {
        let mut r = Reader::new(buf);
        let f = need!(r.u8());
        if f & !flags::KNOWN != 0 {
            return Err(ProtocolError::UnknownFlags(f & !flags::KNOWN));
        }
        let mut meta = FrameMeta {
            flags: f & (flags::DELTA | flags::HEADER | flags::DISCONT),
            ..Default::default()
        };
        for (bit, slot) in [
            (flags::PTS, &mut meta.pts),
            (flags::DTS, &mut meta.dts),
            (flags::DURATION, &mut meta.duration),
            (flags::CAPTURE, &mut meta.capture_unix_ns),
        ] {
            if f & bit != 0 {
                *slot = Some(need!(r.varint()?));
            }
        }
        let len = need!(r.varint()?);
        if len > MAX_FRAME_LEN as u64 {
            return Err(ProtocolError::TooLong {
                what: "frame",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Ok(Some(((meta, len as usize), r.pos)))
    }

    /// Decodes a whole frame (header and payload) from the front of `buf`.
    pub fn decode_frame(buf: &[u8]) -> Decoded<(FrameMeta, std::ops::Range<usize>)> {
        let Some(((meta, len), hdr)) = Self::decode_header(buf)? else {
            return Ok(None);
        };
        if buf.len() - hdr < len {
            return Ok(None);
        }
        Ok(Some(((meta, hdr..hdr + len), hdr + len)))
    }
}

/// The id both sides show for a viewer (the host's `viewer-joined`, the viewer's stats):
/// the first 5 bytes of the viewer's endpoint id in hex, a dash, the host's number for it from
/// `Welcome`.
pub fn viewer_label(viewer_endpoint_id: &[u8; 32], viewer_id: u64) -> String {
    let hex: String = viewer_endpoint_id[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{viewer_id}")
}

/// Encodes a whole frame: header then payload.
pub fn encode_frame(meta: &FrameMeta, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    meta.encode_header(payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_limits() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Ok(Some((v, b.len()))));
            assert_eq!(get_varint(&b[..b.len() - 1]), Ok(None));
        }
        assert_eq!(get_varint(&[0xff; 11]), Err(ProtocolError::VarintOverflow));
        // 10th byte may only carry the top bit of a u64
        let mut b = vec![0xff; 9];
        b.push(0x02);
        assert_eq!(get_varint(&b), Err(ProtocolError::VarintOverflow));
        assert_eq!(get_varint(&[0x81, 0x00]), Err(ProtocolError::VarintNonCanonical));
    }

    #[test]
    fn control_roundtrip() {
        let msgs = [
            Control::Hello {
                secret: [7; SECRET_LEN],
                name: "alice".into(),
            },
            Control::Welcome { viewer_id: 42 },
            Control::Refuse {
                code: CloseCode::HostFull as u32,
                reason: "host is full".into(),
            },
            Control::End,
            Control::Progress {
                seq: 7,
                capture_unix_ns: 1_790_000_000_123_456_789,
            },
            Control::KeyframeRequest,
            Control::Hello2 {
                secret: [9; SECRET_LEN],
                name: "bob".into(),
                max_kbps: 1000,
            },
            Control::Welcome2 {
                viewer_id: 3,
                renditions: vec![
                    RenditionInfo {
                        name: "720p".into(),
                        kbps: 2500,
                    },
                    RenditionInfo {
                        name: "360p".into(),
                        kbps: 800,
                    },
                ],
            },
            Control::ProbeReport { bytes: 123_456 },
            Control::Ceiling { max_kbps: 1000 },
        ];
        for m in msgs {
            let b = m.encode();
            assert_eq!(Control::decode(&b), Ok(Some((m.clone(), b.len()))));
            for cut in 0..b.len() {
                assert_eq!(Control::decode(&b[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn control_rejects_malformed() {
        assert_eq!(
            Control::decode(&[0]).unwrap_err().to_string(),
            "control message is 0 bytes, more than the limit of 65536"
        );
        assert!(matches!(
            Control::decode(&[1, 99]),
            Err(ProtocolError::UnknownMessage(99))
        ));
        // hello cut short inside a complete frame
        assert!(Control::decode(&[3, MSG_HELLO, 1, 2]).is_err());
        // trailing bytes inside the frame
        let mut b = vec![3, MSG_WELCOME, 5, 9];
        assert_eq!(Control::decode(&b), Err(ProtocolError::Trailing("control message", 1)));
        b.truncate(0);
        put_varint(&mut b, MAX_CONTROL_LEN as u64 + 1);
        assert!(matches!(Control::decode(&b), Err(ProtocolError::TooLong { .. })));
        // invalid UTF-8 name
        let mut h = Control::Hello {
            secret: [0; SECRET_LEN],
            name: "ab".into(),
        }
        .encode();
        let n = h.len();
        h[n - 1] = 0xff;
        assert_eq!(Control::decode(&h), Err(ProtocolError::BadUtf8("viewer name")));
    }

    /// The bytes of PROTOCOL.md's worked example.
    #[test]
    fn the_worked_example_is_what_the_code_sends() {
        let secret: [u8; SECRET_LEN] = std::array::from_fn(|i| i as u8);
        let hello = Control::Hello2 {
            secret,
            name: "alice".into(),
            max_kbps: 0,
        }
        .encode();
        assert_eq!(&hello[..2], &[0x18, 0x07]);
        assert_eq!(&hello[18..], &[5, b'a', b'l', b'i', b'c', b'e', 0]);
        let welcome = Control::Welcome2 {
            viewer_id: 3,
            renditions: vec![
                RenditionInfo {
                    name: "360p".into(),
                    kbps: 1500,
                },
                RenditionInfo {
                    name: "180p".into(),
                    kbps: 300,
                },
            ],
        }
        .encode();
        let mut want = vec![0x11, 0x08, 0x03, 0x02, 4];
        want.extend_from_slice(b"360p");
        want.extend_from_slice(&[0xdc, 0x0b, 4]);
        want.extend_from_slice(b"180p");
        want.extend_from_slice(&[0xac, 0x02]);
        assert_eq!(welcome, want);
        assert_eq!(
            Control::ProbeReport { bytes: 20_000 }.encode(),
            [0x04, 0x09, 0xa0, 0x9c, 0x01]
        );
        assert_eq!(Control::Ceiling { max_kbps: 1000 }.encode(), [0x03, 0x0a, 0xe8, 0x07]);
        let caps = "video/mpegts, systemstream=(boolean)true, packetsize=(int)188";
        let h = GopHeader {
            seq: 8,
            caps: caps.into(),
            rendition: Some(1),
        }
        .encode();
        assert_eq!((&h[..3], h[h.len() - 1]), (&[0x52, 0x08, 0x3d][..], 0x01));
    }

    #[test]
    fn welcome2_limits_its_list() {
        let mut b = vec![MSG_WELCOME2, 1];
        put_varint(&mut b, MAX_RENDITIONS as u64 + 1);
        let mut m = Vec::new();
        put_varint(&mut m, b.len() as u64);
        m.extend_from_slice(&b);
        assert!(matches!(
            Control::decode(&m),
            Err(ProtocolError::TooLong {
                what: "rendition list",
                ..
            })
        ));
    }

    #[test]
    fn gop_header_roundtrip_and_errors() {
        for rendition in [None, Some(2)] {
            let h = GopHeader {
                seq: 1234567,
                caps: "video/mpegts, systemstream=(boolean)true, packetsize=(int)188".into(),
                rendition,
            };
            let b = h.encode();
            assert_eq!(b[0], if rendition.is_some() { b'R' } else { b'G' });
            assert_eq!(GopHeader::decode(&b), Ok(Some((h, b.len()))));
            for cut in 0..b.len() {
                assert_eq!(GopHeader::decode(&b[..cut]), Ok(None));
            }
        }
        assert_eq!(GopHeader::decode(b"X"), Err(ProtocolError::BadMagic));
        let mut big = vec![GOP_MAGIC, 1];
        put_varint(&mut big, MAX_CAPS_LEN as u64 + 1);
        assert!(matches!(
            GopHeader::decode(&big),
            Err(ProtocolError::TooLong { what: "caps", .. })
        ));
    }

    #[test]
    fn frame_roundtrip() {
        let metas = [
            FrameMeta::default(),
            FrameMeta {
                flags: flags::DELTA,
                pts: Some(1),
                dts: None,
                duration: Some(33_333_333),
                capture_unix_ns: Some(1_790_000_000_000_000_000),
            },
            FrameMeta {
                flags: flags::HEADER | flags::DISCONT,
                pts: Some(u64::MAX),
                dts: Some(0),
                duration: None,
                capture_unix_ns: None,
            },
        ];
        for meta in metas {
            let payload = vec![0x47u8; 377];
            let b = encode_frame(&meta, &payload);
            let ((m, range), used) = FrameMeta::decode_frame(&b).unwrap().unwrap();
            assert_eq!((m, &b[range], used), (meta, &payload[..], b.len()));
            for cut in 0..b.len() {
                assert_eq!(FrameMeta::decode_frame(&b[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn frame_rejects_malformed() {
        assert_eq!(
            FrameMeta::decode_header(&[0x80, 0]),
            Err(ProtocolError::UnknownFlags(0x80))
        );
        let mut b = vec![0];
        put_varint(&mut b, MAX_FRAME_LEN as u64 + 1);
        assert!(matches!(
            FrameMeta::decode_header(&b),
            Err(ProtocolError::TooLong { what: "frame", .. })
        ));
        assert!(
            FrameMeta::decode_header(&[flags::PTS, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
    }

    #[test]
    fn viewer_label_is_the_short_endpoint_id_and_the_number() {
        let id = iroh_base::SecretKey::from_bytes(&[5; 32]).public();
        assert_eq!(viewer_label(id.as_bytes(), 7), format!("{}-7", id.fmt_short()));
    }

    #[test]
    fn close_codes_map_back() {
        for c in [
            CloseCode::Normal,
            CloseCode::HostFull,
            CloseCode::BadSecret,
            CloseCode::Revoked,
            CloseCode::Kicked,
            CloseCode::Slow,
            CloseCode::Protocol,
            CloseCode::HostStopped,
        ] {
            assert_eq!(CloseCode::from_u64(c as u64), c);
        }
        assert_eq!(CloseCode::from_u64(999), CloseCode::Protocol);
    }
}
