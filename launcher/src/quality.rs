//! Quality presets: resolution, bitrate and frame rate go together (the seed's table).

use crate::cli::Quality;

/// What the encoder is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Largest output height (None = native).
    pub max_height: Option<u32>,
    pub bitrate_kbps: u32,
    pub framerate: u32,
    /// The preset these came from (auto resolved).
    pub preset: Quality,
}

/// The seed's presets: (preset, max height, kbit/s); all 30 fps.
const PRESETS: [(Quality, Option<u32>, u32); 4] = [
    (Quality::Source, None, 6000),
    (Quality::High, Some(1080), 4000),
    (Quality::Medium, Some(720), 2500),
    (Quality::Low, Some(480), 1000),
];

/// Per-field overrides from the command line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overrides {
    pub max_height: Option<u32>,
    pub bitrate_kbps: Option<u32>,
    pub framerate: Option<u32>,
}

/// Resolves a preset (auto from `upstream_mbps` ÷ `viewers`, medium when unmeasured) and
/// applies overrides, which win field by field.
pub fn resolve(q: Quality, o: Overrides, upstream_mbps: Option<f64>, viewers: u32) -> Settings {
    let preset = match q {
        Quality::Auto => match upstream_mbps {
            None => Quality::Medium,
            Some(up) => {
                let per_viewer_kbps = up * 1000.0 / f64::from(viewers.max(1));
                PRESETS
                    .iter()
                    .find(|(_, _, kbps)| f64::from(*kbps) <= per_viewer_kbps)
                    .map_or(Quality::Low, |p| p.0)
            }
        },
        other => other,
    };
    let (_, h, kbps) = *PRESETS
        .iter()
        .find(|p| p.0 == preset)
        .expect("every preset is in the table");
    Settings {
        max_height: o.max_height.or(h),
        bitrate_kbps: o.bitrate_kbps.unwrap_or(kbps),
        framerate: o.framerate.unwrap_or(30),
        preset,
    }
}

/// Output size for a `w`×`h` source: no taller than `max_height`, same aspect ratio (square
/// pixels), both dimensions even (H.264 4:2:0 needs them), never upscaled.
pub fn output_size(w: u32, h: u32, max_height: Option<u32>) -> (u32, u32) {
    let (w, h) = (w.max(2), h.max(2));
    let target_h = even_down(max_height.map_or(h, |m| m.min(h)));
    if target_h >= even_down(h) {
        return (even_down(w), even_down(h));
    }
    // Nearest even width for the scaled height (1920x1080 → 854x480), never wider than the source.
    let half = (f64::from(w) * f64::from(target_h) / f64::from(h) / 2.0).round() as u32;
    ((half * 2).clamp(2, even_down(w)), target_h)
}

fn even_down(v: u32) -> u32 {
    (v & !1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_seed_table() {
        let r = |q| resolve(q, Overrides::default(), None, 1);
        assert_eq!(
            (r(Quality::Source).max_height, r(Quality::Source).bitrate_kbps),
            (None, 6000)
        );
        assert_eq!(
            (r(Quality::High).max_height, r(Quality::High).bitrate_kbps),
            (Some(1080), 4000)
        );
        assert_eq!(
            (r(Quality::Medium).max_height, r(Quality::Medium).bitrate_kbps),
            (Some(720), 2500)
        );
        assert_eq!(
            (r(Quality::Low).max_height, r(Quality::Low).bitrate_kbps),
            (Some(480), 1000)
        );
        assert!(
            [Quality::Source, Quality::High, Quality::Medium, Quality::Low]
                .iter()
                .all(|q| r(*q).framerate == 30)
        );
    }

    #[test]
    fn auto_sizes_for_the_viewer_cap() {
        let o = Overrides::default();
        assert_eq!(resolve(Quality::Auto, o, None, 2).preset, Quality::Medium, "unmeasured");
        assert_eq!(resolve(Quality::Auto, o, Some(8.78), 1).preset, Quality::Source);
        assert_eq!(resolve(Quality::Auto, o, Some(8.78), 2).preset, Quality::High);
        assert_eq!(resolve(Quality::Auto, o, Some(8.78), 3).preset, Quality::Medium);
        assert_eq!(resolve(Quality::Auto, o, Some(8.78), 8).preset, Quality::Low);
        assert_eq!(
            resolve(Quality::Auto, o, Some(0.5), 1).preset,
            Quality::Low,
            "nothing fits: lowest"
        );
    }

    #[test]
    fn overrides_win_per_field() {
        let o = Overrides {
            max_height: Some(600),
            bitrate_kbps: None,
            framerate: Some(15),
        };
        let s = resolve(Quality::Low, o, None, 1);
        assert_eq!((s.max_height, s.bitrate_kbps, s.framerate), (Some(600), 1000, 15));
    }

    #[test]
    fn output_size_keeps_aspect_and_even_dims() {
        assert_eq!(output_size(1920, 1080, Some(480)), (854, 480));
        assert_eq!(output_size(1920, 1080, Some(720)), (1280, 720));
        assert_eq!(output_size(1920, 1080, None), (1920, 1080));
        assert_eq!(output_size(1280, 720, Some(1080)), (1280, 720), "never upscale");
        assert_eq!(output_size(201, 151, None), (200, 150), "odd window");
        assert_eq!(output_size(2560, 1080, Some(480)), (1138, 480));
        let (w, h) = output_size(1001, 999, Some(333));
        assert!(w % 2 == 0 && h % 2 == 0);
    }
}
