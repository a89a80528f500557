//! The 2×2 box average of one plane. Pure, no GStreamer.

/// Writes into `dst` (`dst_stride` bytes per row) the plane `src` (`src_stride` bytes per row)
/// halved: `out_w` × `out_h` samples of `BPP` bytes each (1 for a luma or I420 chroma plane,
/// 2 for NV12's interleaved chroma), each byte the rounded mean of the four bytes of the same
/// component in the 2×2 block above it.
///
/// Panics if a plane is smaller than the sizes and strides say.
pub fn halve_plane<const BPP: usize>(
    src: &[u8],
    src_stride: usize,
    dst: &mut [u8],
    dst_stride: usize,
    out_w: usize,
    out_h: usize,
) {
    let row = out_w * BPP;
    for y in 0..out_h {
        let top = &src[2 * y * src_stride..][..2 * row];
        let bottom = &src[(2 * y + 1) * src_stride..][..2 * row];
        let out = &mut dst[y * dst_stride..][..row];
        halve_row::<BPP>(top, bottom, out);
    }
}

/// One output row from two input rows; written so that the compiler vectorizes it.
#[inline]
fn halve_row<const BPP: usize>(top: &[u8], bottom: &[u8], out: &mut [u8]) {
    let pairs = top
        .chunks_exact(2 * BPP)
        .zip(bottom.chunks_exact(2 * BPP))
        .zip(out.chunks_exact_mut(BPP));
    for ((t, b), o) in pairs {
        for c in 0..BPP {
            let sum = u16::from(t[c]) + u16::from(t[c + BPP]) + u16::from(b[c]) + u16::from(b[c + BPP]);
            o[c] = ((sum + 2) >> 2) as u8;
        }
    }
}

/// Half of `v`, rounded down to even, at least 2.
pub fn half_even(v: u32) -> u32 {
    ((v / 2) & !1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_output_byte_is_the_rounded_mean_of_its_block() {
        // 4x2 luma, stride 5 (one byte of padding per row)
        let src = [10, 20, 30, 40, 99, 30, 40, 50, 61, 99];
        let mut dst = [0u8; 2];
        halve_plane::<1>(&src, 5, &mut dst, 2, 2, 1);
        assert_eq!(dst, [25, 45]); // (10+20+30+40)/4 = 25, (30+40+50+61+2)/4 = 45.75 → 45
    }

    #[test]
    fn interleaved_chroma_averages_each_component_apart() {
        // NV12 chroma: one row of U,V pairs; two rows; 2 output samples
        let src = [
            0, 100, 4, 104, 8, 200, 12, 204, //
            0, 100, 4, 104, 8, 200, 12, 204,
        ];
        let mut dst = [0u8; 4];
        halve_plane::<2>(&src, 8, &mut dst, 4, 2, 1);
        assert_eq!(dst, [2, 102, 10, 202]);
    }

    #[test]
    fn flat_planes_stay_flat_and_odd_edges_are_dropped() {
        let src = vec![77u8; 7 * 5];
        let mut dst = vec![0u8; 3 * 2];
        halve_plane::<1>(&src, 7, &mut dst, 3, 3, 2);
        assert!(dst.iter().all(|v| *v == 77));
        assert_eq!(
            (half_even(1920), half_even(1366), half_even(1080), half_even(3)),
            (960, 682, 540, 2)
        );
    }
}
