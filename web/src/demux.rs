//! MPEG-TS to what the browser's decoders take: H.264 access units (Annex B, one PES each)
//! and AAC frames (ADTS), with their PTS. Only what mpegtsmux writes for a share is read:
//! one program, PAT and PMT in single packets, H.264 (stream type 0x1b) and AAC in ADTS
//! (0x0f). Pure: packets in, units out.

use crate::codec::{self, AacConfig};

const PACKET: usize = 188;
const SYNC: u8 = 0x47;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;
/// PTS are 33-bit counters of a 90 kHz clock.
const PTS_WRAP: u64 = 1 << 33;
/// The PES being assembled is given up past this size (a broken stream, not a frame).
const MAX_PES: usize = 16 * 1024 * 1024;

/// One thing to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// An H.264 access unit in Annex B. `codec` is set when it carries an SPS.
    Video {
        /// 90 kHz, unwrapped (monotonic across the 33-bit wrap).
        pts: Option<u64>,
        key: bool,
        codec: Option<String>,
        data: Vec<u8>,
    },
    /// One ADTS frame (header included, as WebCodecs takes AAC without a description).
    Audio {
        /// 90 kHz, unwrapped; each frame of a PES gets its own (1024 samples apart).
        pts: Option<u64>,
        config: AacConfig,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    H264,
    Aac,
}

/// One elementary stream and the PES being assembled for it.
#[derive(Debug)]
struct Stream {
    pid: u16,
    kind: Kind,
    pes: Vec<u8>,
    /// A PES started here (we joined at its start), so `pes` is worth keeping.
    open: bool,
    last_pts: Option<u64>,
}

/// The demuxer: tables seen so far and one PES per elementary stream.
#[derive(Debug, Default)]
pub struct Demuxer {
    pmt_pid: Option<u16>,
    streams: Vec<Stream>,
}

impl Demuxer {
    /// Whether the program has an audio stream (known once a PMT was read).
    pub fn has_audio(&self) -> bool {
        self.streams.iter().any(|s| s.kind == Kind::Aac)
    }

    /// Whether a PMT was read, i.e. what follows can be decoded.
    pub fn has_program(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Reads whole 188-byte packets; units whose PES ended (the next one started) go to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Unit>) {
        for pkt in data.chunks_exact(PACKET) {
            if pkt[0] != SYNC {
                continue;
            }
            let pusi = pkt[1] & 0x40 != 0;
            let pid = (u16::from(pkt[1] & 0x1f) << 8) | u16::from(pkt[2]);
            let Some(payload) = payload(pkt) else { continue };
            if pid == 0 && pusi {
                self.pmt_pid = parse_pat(payload).or(self.pmt_pid);
            } else if Some(pid) == self.pmt_pid && pusi {
                if let Some(es) = parse_pmt(payload) {
                    self.set_streams(es);
                }
            } else if let Some(s) = self.streams.iter_mut().find(|s| s.pid == pid) {
                if pusi {
                    s.finish(out);
                    s.open = true;
                }
                if s.open {
                    s.pes.extend_from_slice(payload);
                    if s.pes.len() > MAX_PES {
                        s.pes.clear();
                        s.open = false;
                    }
                }
            }
        }
    }

    /// Emits every PES that is complete now. A share's frames hold whole PES packets, so
    /// calling this after each frame hands a video access unit over without waiting for the
    /// next one to start.
    pub fn flush(&mut self, out: &mut Vec<Unit>) {
        for s in &mut self.streams {
            if s.open && pes_complete(&s.pes) {
                s.finish(out);
            }
        }
    }

    /// Forgets half-assembled PES packets (after a skipped or reset GOP; the tables stay).
    pub fn discard(&mut self) {
        for s in &mut self.streams {
            s.pes.clear();
            s.open = false;
        }
    }

    /// A new PMT: keep the streams (and their half-read PES) that are still there.
    fn set_streams(&mut self, es: Vec<(u16, Kind)>) {
        let mut old = std::mem::take(&mut self.streams);
        for (pid, kind) in es {
            match old.iter().position(|s| s.pid == pid && s.kind == kind) {
                Some(i) => self.streams.push(old.swap_remove(i)),
                None => self.streams.push(Stream {
                    pid,
                    kind,
                    pes: Vec::new(),
                    open: false,
                    last_pts: None,
                }),
            }
        }
    }
}

impl Stream {
    /// Turns the assembled PES into units.
    fn finish(&mut self, out: &mut Vec<Unit>) {
        let pes = std::mem::take(&mut self.pes);
        self.open = false;
        let Some((pts, es)) = parse_pes(&pes) else { return };
        let pts = pts.map(|p| {
            let p = unwrap_pts(self.last_pts, p);
            self.last_pts = Some(p);
            p
        });
        match self.kind {
            Kind::H264 => out.push(Unit::Video {
                pts,
                key: codec::h264_is_idr(es),
                codec: codec::h264_codec(es),
                data: es.to_vec(),
            }),
            Kind::Aac => split_adts(pts, es, out),
        }
    }
}

/// The ADTS frames of one audio PES, each with its own PTS (1024 samples per AAC frame).
fn split_adts(pts: Option<u64>, mut es: &[u8], out: &mut Vec<Unit>) {
    let mut samples = 0u64;
    while let Some((config, len)) = codec::adts_frame(es) {
        let pts = pts.map(|p| p + samples * 90_000 / u64::from(config.sample_rate));
        out.push(Unit::Audio {
            pts,
            config,
            data: es[..len].to_vec(),
        });
        samples += 1024;
        es = &es[len..];
    }
}

/// The PTS nearest to `last` among `pts33` plus any number of 33-bit wraps.
fn unwrap_pts(last: Option<u64>, pts33: u64) -> u64 {
    let Some(last) = last else { return pts33 };
    let base = last - last % PTS_WRAP;
    [base.checked_sub(PTS_WRAP), Some(base), base.checked_add(PTS_WRAP)]
        .into_iter()
        .flatten()
        .map(|b| b + pts33)
        .min_by_key(|c| c.abs_diff(last))
        .unwrap_or(pts33)
}

/// Payload of a TS packet (after the adaptation field), if any.
fn payload(pkt: &[u8]) -> Option<&[u8]> {
    match (pkt[3] >> 4) & 0x3 {
        1 => Some(&pkt[4..]),
        3 => pkt.get(5 + usize::from(pkt[4])..),
        _ => None,
    }
}

/// The section in a payload that starts one (after the pointer field), cut to its length.
fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let s = payload.get(1 + usize::from(*payload.first()?)..)?;
    if *s.first()? != table_id {
        return None;
    }
    let len = (usize::from(s.get(1)? & 0x0f) << 8) | usize::from(*s.get(2)?);
    s.get(..3 + len)
}

/// The PMT PID of the first program in a PAT.
fn parse_pat(payload: &[u8]) -> Option<u16> {
    let s = section(payload, 0)?;
    // 8 header bytes, then 4 per program, then a 4-byte CRC
    s.get(8..s.len().checked_sub(4)?)?
        .chunks_exact(4)
        .find(|e| e[0] != 0 || e[1] != 0) // program 0 is the network PID
        .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
}

/// The elementary streams of a PMT this viewer can decode.
fn parse_pmt(payload: &[u8]) -> Option<Vec<(u16, Kind)>> {
    let s = section(payload, 2)?;
    let info_len = (usize::from(s.get(10)? & 0x0f) << 8) | usize::from(*s.get(11)?);
    let mut es = s.get(12 + info_len..s.len().checked_sub(4)?)?;
    let mut found = Vec::new();
    while es.len() >= 5 {
        let pid = (u16::from(es[1] & 0x1f) << 8) | u16::from(es[2]);
        let es_info = (usize::from(es[3] & 0x0f) << 8) | usize::from(es[4]);
        match es[0] {
            STREAM_TYPE_H264 => found.push((pid, Kind::H264)),
            STREAM_TYPE_AAC_ADTS => found.push((pid, Kind::Aac)),
            _ => {}
        }
        es = es.get(5 + es_info..)?;
    }
    Some(found)
}

/// Whether a PES is whole: its length field is reached, or it has none (video) and so ends
/// where it stands.
fn pes_complete(pes: &[u8]) -> bool {
    match pes.get(4..6) {
        Some(l) => {
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            len == 0 || pes.len() >= 6 + len
        }
        None => false,
    }
}

/// A PES packet's PTS (33 bits, if present) and its payload.
fn parse_pes(pes: &[u8]) -> Option<(Option<u64>, &[u8])> {
    if pes.get(..3)? != [0, 0, 1] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*pes.get(4)?, *pes.get(5)?]));
    let end = if len == 0 { pes.len() } else { (6 + len).min(pes.len()) };
    let header_len = usize::from(*pes.get(8)?);
    let body = pes.get(9 + header_len..end)?;
    let pts = match pes[7] & 0x80 != 0 {
        true => {
            let p = pes.get(9..14)?;
            Some(
                (u64::from((p[0] >> 1) & 0x07) << 30)
                    | (u64::from(p[1]) << 22)
                    | (u64::from(p[2] >> 1) << 15)
                    | (u64::from(p[3]) << 7)
                    | u64::from(p[4] >> 1),
            )
        }
        false => None,
    };
    Some((pts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{adts, idr_au};

    const PMT_PID: u16 = 0x20;
    const VIDEO: u16 = 0x41;
    const AUDIO: u16 = 0x42;

    /// TS packets carrying `payload` on `pid`, the first with PUSI, stuffed with an
    /// adaptation field at the end as mpegtsmux does.
    fn packets(pid: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, chunk) in payload.chunks(PACKET - 4).enumerate() {
            let pusi = if i == 0 { 0x40 } else { 0 };
            let mut p = vec![SYNC, pusi | (pid >> 8) as u8, pid as u8];
            if chunk.len() == PACKET - 4 {
                p.push(0x10);
            } else {
                let af = PACKET - 5 - chunk.len();
                p.push(0x30);
                p.push(af as u8);
                if af > 0 {
                    p.push(0);
                    p.resize(6 + af - 1, 0xff);
                }
            }
            p.extend_from_slice(chunk);
            assert_eq!(p.len(), PACKET);
            out.extend(p);
        }
        out
    }

    fn section_payload(mut s: Vec<u8>) -> Vec<u8> {
        let len = s.len() - 3 + 4; // plus CRC
        s[1] = 0xb0 | (len >> 8) as u8;
        s[2] = len as u8;
        s.extend_from_slice(&[1, 2, 3, 4]);
        let mut p = vec![0]; // pointer field
        p.extend(s);
        p
    }

    fn tables() -> Vec<u8> {
        let pat = section_payload(vec![0, 0, 0, 0, 1, 0xc1, 0, 0, 0, 1, 0xe0, PMT_PID as u8]);
        let pmt = section_payload(vec![
            2,
            0,
            0,
            0,
            1,
            0xc1,
            0,
            0,
            0xe0,
            VIDEO as u8,
            0xf0,
            0, //
            0x1b,
            0xe0,
            VIDEO as u8,
            0xf0,
            0, //
            0x0f,
            0xe0,
            AUDIO as u8,
            0xf0,
            0x02,
            0x0a,
            0x00, // with a 2-byte descriptor
            0x06,
            0xe0,
            0x50,
            0xf0,
            0, // private data: ignored
        ]);
        let mut t = packets(0, &pat);
        t.extend(packets(PMT_PID, &pmt));
        t
    }

    fn pes(stream_id: u8, pts: u64, es: &[u8], bounded: bool) -> Vec<u8> {
        let mut p = vec![0, 0, 1, stream_id, 0, 0, 0x80, 0x80, 5];
        p.push(0x21 | ((pts >> 29) as u8 & 0x0e));
        p.push((pts >> 22) as u8);
        p.push(((pts >> 14) as u8 & 0xfe) | 1);
        p.push((pts >> 7) as u8);
        p.push(((pts << 1) as u8) | 1);
        p.extend_from_slice(es);
        if bounded {
            let len = p.len() - 6;
            p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        }
        p
    }

    #[test]
    fn demuxes_video_and_audio_with_their_pts() {
        let mut d = Demuxer::default();
        let mut out = Vec::new();
        let pts = 3600 * 90_000 + 7;
        let mut ts = tables();
        ts.extend(packets(VIDEO, &pes(0xe0, pts, &idr_au(), false)));
        let mut two = adts(300);
        two.extend(adts(200));
        ts.extend(packets(AUDIO, &pes(0xc0, pts, &two, true)));
        d.push(&ts, &mut out);
        assert!(d.has_program() && d.has_audio());
        assert_eq!(out.len(), 0, "nothing ends before a flush or the next PES");
        d.flush(&mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[0],
            Unit::Video {
                pts: Some(pts),
                key: true,
                codec: Some("avc1.42C01F".into()),
                data: idr_au()
            }
        );
        let Unit::Audio { pts: p1, data: d1, .. } = &out[1] else {
            panic!()
        };
        let Unit::Audio { pts: p2, config, .. } = &out[2] else {
            panic!()
        };
        assert_eq!((*p1, d1.len()), (Some(pts), 300));
        assert_eq!(*p2, Some(pts + 1920), "1024 samples at 48 kHz later");
        assert_eq!(config.channels, 2);
    }

    #[test]
    fn a_pes_ends_when_the_next_starts_and_a_mid_pes_join_is_dropped() {
        let mut d = Demuxer::default();
        let mut out = Vec::new();
        d.push(&tables(), &mut out);
        let big: Vec<u8> = idr_au().into_iter().chain(std::iter::repeat_n(0x11, 1000)).collect();
        let first = packets(VIDEO, &pes(0xe0, 100, &big, false));
        d.push(&first[PACKET..], &mut out); // joined mid-PES
        d.push(&packets(VIDEO, &pes(0xe0, 3100, &[0, 0, 1, 0x41, 1], false)), &mut out);
        assert!(out.is_empty(), "the half PES is not a unit");
        d.push(&first, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            &out[0],
            Unit::Video {
                pts: Some(3100),
                key: false,
                codec: None,
                ..
            }
        ));
        d.discard();
        d.flush(&mut out);
        assert_eq!(out.len(), 1, "discarded");
    }

    #[test]
    fn an_audio_pes_waits_for_its_length() {
        let mut d = Demuxer::default();
        let mut out = Vec::new();
        d.push(&tables(), &mut out);
        let a = packets(AUDIO, &pes(0xc0, 5, &adts(400), true));
        d.push(&a[..PACKET], &mut out);
        d.flush(&mut out);
        assert!(out.is_empty(), "not whole yet");
        d.push(&a[PACKET..], &mut out);
        d.flush(&mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn pts_unwraps_across_33_bits() {
        assert_eq!(unwrap_pts(None, 5), 5);
        assert_eq!(unwrap_pts(Some(PTS_WRAP - 10), 20), PTS_WRAP + 20);
        assert_eq!(unwrap_pts(Some(PTS_WRAP + 20), PTS_WRAP - 10), PTS_WRAP - 10);
        assert_eq!(unwrap_pts(Some(1000), 900), 900, "B-frames go back a little");
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut d = Demuxer::default();
        let mut out = Vec::new();
        d.push(&tables(), &mut out);
        let mut junk = vec![0u8; PACKET * 4];
        for (i, b) in junk.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        for p in junk.chunks_mut(PACKET) {
            p[0] = SYNC;
            p[1] = 0x40;
            p[2] = VIDEO as u8;
        }
        d.push(&junk, &mut out);
        d.flush(&mut out);
        d.push(&packets(VIDEO, &[0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 200]), &mut out);
        d.flush(&mut out);
    }
}
