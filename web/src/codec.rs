//! What WebCodecs needs to know about the elementary streams: H.264 NAL units in Annex B (the
//! codec string `avc1.PPCCLL` from the SPS, whether an access unit holds an IDR picture) and
//! AAC in ADTS (object type, sample rate, channels, frame boundaries). Pure: bytes in.

/// NAL unit type of an IDR slice.
const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
const NAL_SPS: u8 = 7;

/// The NAL units of an Annex B byte stream (start codes `00 00 01` or `00 00 00 01`), each
/// without its start code.
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // the next start code begins 3 bytes before its payload, 4 with a leading zero
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| s < e)
        .map(move |(s, e)| &data[s..e])
}

/// The WebCodecs codec string of an H.264 access unit that carries an SPS
/// (`avc1.` + profile_idc, constraint flags, level_idc in hex), e.g. `avc1.42C01F`.
pub fn h264_codec(au: &[u8]) -> Option<String> {
    let sps = nal_units(au).find(|n| n[0] & 0x1f == NAL_SPS)?;
    let b = sps.get(1..4)?;
    Some(format!("avc1.{:02X}{:02X}{:02X}", b[0], b[1], b[2]))
}

/// Whether an access unit holds an IDR slice: a decoder can start here.
pub fn h264_is_idr(au: &[u8]) -> bool {
    nal_units(au).any(|n| n[0] & 0x1f == NAL_IDR)
}

/// The AAC configuration in an ADTS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// MPEG-4 audio object type (2: AAC LC).
    pub object_type: u8,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channel configuration (1: mono, 2: stereo, …).
    pub channels: u8,
}

impl AacConfig {
    /// The WebCodecs codec string, e.g. `mp4a.40.2`.
    pub fn codec(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

const ADTS_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The first ADTS frame in `data`: its configuration and its length in bytes (header
/// included). None when `data` does not start with a whole, valid ADTS frame.
pub fn adts_frame(data: &[u8]) -> Option<(AacConfig, usize)> {
    let h = data.get(..7)?;
    if h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
        return None; // no syncword, or layer is not 0
    }
    let object_type = (h[2] >> 6) + 1;
    let sample_rate = *ADTS_RATES.get(usize::from((h[2] >> 2) & 0x0f))?;
    let channels = ((h[2] & 0x01) << 2) | (h[3] >> 6);
    let len = (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    if len < 7 || len > data.len() {
        return None;
    }
    Some((
        AacConfig {
            object_type,
            sample_rate,
            channels,
        },
        len,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An SPS as x264 writes it for Constrained Baseline level 3.1, then a PPS and an IDR.
    pub(crate) fn idr_au() -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        au.extend_from_slice(&[0, 0, 1, 0x65, 0x88, 0x84, 0x00]);
        au
    }

    #[test]
    fn splits_annex_b_and_reads_the_codec() {
        let au = idr_au();
        let nals: Vec<&[u8]> = nal_units(&au).collect();
        assert_eq!(nals.len(), 3);
        assert_eq!(nals[0], &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01]);
        assert_eq!(nals[1], &[0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(nals[2], &[0x65, 0x88, 0x84, 0x00], "trailing zero of the last NAL kept");
        assert_eq!(h264_codec(&au).as_deref(), Some("avc1.42C01F"));
        assert!(h264_is_idr(&au));
        let p_frame = [0, 0, 0, 1, 0x41, 0x9a, 0x00];
        assert!(!h264_is_idr(&p_frame));
        assert_eq!(h264_codec(&p_frame), None);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0, "no start code, no NAL");
    }

    /// A 48 kHz stereo AAC LC ADTS header for a frame of `len` bytes.
    pub(crate) fn adts(len: usize) -> Vec<u8> {
        let mut f = vec![
            0xff,
            0xf1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            ((len as u8 & 7) << 5) | 0x1f,
            0xfc,
        ];
        f.resize(len, 0x21);
        f
    }

    #[test]
    fn reads_adts_headers() {
        let f = adts(371);
        let (cfg, len) = adts_frame(&f).unwrap();
        assert_eq!(
            cfg,
            AacConfig {
                object_type: 2,
                sample_rate: 48000,
                channels: 2
            }
        );
        assert_eq!((len, cfg.codec().as_str()), (371, "mp4a.40.2"));
        assert_eq!(adts_frame(&f[..370]), None, "cut short");
        assert_eq!(adts_frame(&[0x47; 10]), None, "no syncword");
    }
}
