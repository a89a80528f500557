//! MPEG-TS program tables cache.
//!
//! mpegtsmux repeats PAT/PMT on a timer, not right before each keyframe, so a viewer that
//! starts at a GOP would otherwise discard video until the next PAT/PMT (and then miss that
//! GOP's keyframe). The host keeps the latest PAT and PMT packets and sends them to every new
//! viewer before its first GOP. Pure: bytes in, packets out.

use bytes::Bytes;

const PACKET: usize = 188;
const SYNC: u8 = 0x47;

/// The latest PAT and PMT packets seen.
#[derive(Debug, Default)]
pub struct PsiCache {
    pat: Option<Bytes>,
    pmt_pids: Vec<u16>,
    pmts: Vec<(u16, Bytes)>,
}

impl PsiCache {
    /// Scans whole 188-byte packets in `data`; returns true if a PAT or PMT was (re)cached.
    pub fn scan(&mut self, data: &[u8]) -> bool {
        let mut changed = false;
        for pkt in data.chunks_exact(PACKET) {
            if pkt[0] != SYNC || pkt[1] & 0x40 == 0 {
                continue; // not synced, or no section starts here
            }
            let pid = (u16::from(pkt[1] & 0x1f) << 8) | u16::from(pkt[2]);
            if pid == 0 {
                if let Some(pids) = parse_pat(pkt) {
                    self.pmts.retain(|(p, _)| pids.contains(p));
                    self.pmt_pids = pids;
                    self.pat = Some(Bytes::copy_from_slice(pkt));
                    changed = true;
                }
            } else if self.pmt_pids.contains(&pid) {
                let b = Bytes::copy_from_slice(pkt);
                match self.pmts.iter_mut().find(|(p, _)| *p == pid) {
                    Some(slot) => slot.1 = b,
                    None => self.pmts.push((pid, b)),
                }
                changed = true;
            }
        }
        changed
    }

    /// PAT then PMTs as one buffer, once a PAT and all its PMTs were seen.
    pub fn tables(&self) -> Option<Bytes> {
        let pat = self.pat.as_ref()?;
        if self.pmts.len() < self.pmt_pids.len() {
            return None;
        }
        let mut out = Vec::with_capacity(PACKET * (1 + self.pmts.len()));
        out.extend_from_slice(pat);
        for (_, p) in &self.pmts {
            out.extend_from_slice(p);
        }
        Some(out.into())
    }
}

/// Payload of a TS packet (after the adaptation field), if any.
fn payload(pkt: &[u8]) -> Option<&[u8]> {
    let afc = (pkt[3] >> 4) & 0x3;
    match afc {
        1 => Some(&pkt[4..]),
        3 => pkt.get(5 + usize::from(pkt[4])..),
        _ => None,
    }
}

/// The PMT PIDs listed in a single-packet PAT.
fn parse_pat(pkt: &[u8]) -> Option<Vec<u16>> {
    let p = payload(pkt)?;
    let section = p.get(1 + usize::from(*p.first()?)..)?;
    if *section.first()? != 0 {
        return None; // not a PAT
    }
    let len = (usize::from(section.get(1)? & 0x0f) << 8) | usize::from(*section.get(2)?);
    // header (8 bytes after table_id/length) .. CRC (4 bytes)
    let programs = section.get(8..(3 + len).checked_sub(4)?)?;
    Some(
        programs
            .chunks_exact(4)
            .filter(|e| e[0] != 0 || e[1] != 0) // program 0 = network PID
            .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, pusi: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![SYNC, (if pusi { 0x40 } else { 0 }) | (pid >> 8) as u8, pid as u8, 0x10];
        p.extend_from_slice(payload);
        p.resize(PACKET, 0xff);
        p
    }

    fn pat(pmt_pid: u16) -> Vec<u8> {
        // pointer, table_id 0, section_length 13, tsid, version, sec nums, program 1 -> pid, crc
        let s = [
            0u8,
            0x00,
            0xb0,
            13,
            0,
            1,
            0xc1,
            0,
            0,
            0,
            1,
            0xe0 | (pmt_pid >> 8) as u8,
            pmt_pid as u8,
            1,
            2,
            3,
            4,
        ];
        packet(0, true, &s)
    }

    #[test]
    fn caches_pat_and_pmt() {
        let mut c = PsiCache::default();
        assert!(!c.scan(&packet(0x41, true, &[0; 10])), "PMT before PAT is unknown");
        assert!(c.scan(&pat(0x20)));
        assert_eq!(c.tables(), None, "PMT not seen yet");
        let mut stream = packet(0x100, true, &[1, 2, 3]); // video
        stream.extend(packet(0x20, true, &[0, 2, 0xb0]));
        assert!(c.scan(&stream));
        let t = c.tables().unwrap();
        assert_eq!(t.len(), 2 * PACKET);
        assert_eq!(&t[..PACKET], &pat(0x20)[..]);
        assert_eq!(t[PACKET + 2], 0x20);
    }

    #[test]
    fn ignores_garbage() {
        let mut c = PsiCache::default();
        assert!(!c.scan(&[0u8; 3 * PACKET]));
        assert!(!c.scan(&packet(0, true, &[200])));
        assert!(!c.scan(&[SYNC; 10]));
    }
}
