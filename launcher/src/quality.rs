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

/// Which renditions the host encodes (`--renditions`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Renditions {
    /// The chosen quality plus ≈ ⅓ of its bitrate at ½ of its height and ≈ ⅛ at ¼ (small
    /// frames: the lower rungs cost a fraction of the top one's encode).
    #[default]
    Auto,
    /// One encode.
    Off,
    /// The chosen quality plus these lower rungs: (max height, kbit/s).
    List(Vec<(u32, u32)>),
}

impl Renditions {
    /// How many renditions, the top one included.
    pub fn count(&self) -> usize {
        match self {
            Renditions::Auto => 1 + auto_lower(1080, 4000).len(),
            Renditions::Off => 1,
            Renditions::List(l) => l.len() + 1,
        }
    }
}

impl std::str::FromStr for Renditions {
    type Err = String;

    /// `auto`, `off`, or lower rungs as `HEIGHT:KBPS` separated by commas (`480:800,240:250`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => return Ok(Renditions::Auto),
            "off" => return Ok(Renditions::Off),
            _ => {}
        }
        let bad =
            |r: &str| format!("{r:?} is not HEIGHT:KBPS (e.g. 480:800); use auto, off or a list like 480:800,240:250");
        let rungs = s
            .split(',')
            .map(|r| {
                let (h, k) = r.trim().split_once(':').ok_or_else(|| bad(r))?;
                let (h, k) = (
                    h.parse::<u32>().map_err(|_| bad(r))?,
                    k.parse::<u32>().map_err(|_| bad(r))?,
                );
                if !(2..=8640).contains(&h) || !(50..=100_000).contains(&k) {
                    return Err(format!("{r:?}: height 2–8640, bitrate 50–100000 kbit/s"));
                }
                Ok((h, k))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if rungs.len() > 4 {
            return Err("at most 4 lower renditions".into());
        }
        Ok(Renditions::List(rungs))
    }
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    /// Largest output height (None = native).
    pub max_height: Option<u32>,
    pub bitrate_kbps: u32,
}

/// The ladder for top quality `top` from a `source_height` source, top first: the top rung is
/// `top` itself; lower rungs never taller than the one above nor than the source.
pub fn ladder(top: &Settings, source_height: u32, r: &Renditions) -> Vec<Rung> {
    let top_h = top.max_height.map_or(source_height, |m| m.min(source_height));
    let lower: Vec<(u32, u32)> = match r {
        Renditions::Off => Vec::new(),
        Renditions::Auto => auto_lower(top_h, top.bitrate_kbps),
        Renditions::List(l) => l.clone(),
    };
    let mut rungs = vec![Rung {
        max_height: top.max_height,
        bitrate_kbps: top.bitrate_kbps,
    }];
    for (h, k) in lower {
        let above = rungs.last().expect("top rung");
        let h = h.min(above.max_height.unwrap_or(top_h)).max(2);
        rungs.push(Rung {
            max_height: Some(h),
            bitrate_kbps: k.min(above.bitrate_kbps),
        });
    }
    rungs
}

/// `--renditions auto`'s lower rungs under a top rung `top_h` high at `kbps`: (height, kbit/s).
/// Halving steps: each picture is the one above halved (`halfscale`, the cheapest scale there
/// is), the lowest no smaller than 180 lines where the top allows.
fn auto_lower(top_h: u32, kbps: u32) -> Vec<(u32, u32)> {
    vec![(top_h / 2, kbps / 3), ((top_h / 4).max(180).min(top_h / 2), kbps / 8)]
}

/// What a viewer asks the host for at most with `--quality` (kbit/s; 0 = no ceiling).
pub fn viewer_ceiling_kbps(q: Quality) -> u32 {
    match q {
        Quality::Auto | Quality::Source => 0,
        other => PRESETS.iter().find(|p| p.0 == other).map_or(0, |p| p.2),
    }
}

/// The ceiling after `kbps` when a viewer steps through them (the built-in window's `q`): none,
/// then low, medium, high, and none again.
pub fn next_viewer_ceiling(kbps: u32) -> u32 {
    let steps = [Quality::Low, Quality::Medium, Quality::High].map(viewer_ceiling_kbps);
    steps
        .into_iter()
        .find(|s| kbps == 0 || *s > kbps)
        .filter(|_| kbps < steps[2])
        .unwrap_or(0)
}

/// A ceiling for people: the quality whose bitrate it is, or the figure.
pub fn ceiling_name(kbps: u32) -> String {
    if kbps == 0 {
        return "no ceiling".into();
    }
    match PRESETS.iter().find(|p| p.2 == kbps && p.0 != Quality::Source) {
        Some(p) => format!("at most {}", format!("{:?}", p.0).to_lowercase()),
        None => format!("at most {kbps} kbit/s"),
    }
}

fn even_down(v: u32) -> u32 {
    (v & !1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewer_ceiling_steps_through_the_presets_and_back_to_none() {
        let mut seen = vec![0];
        for _ in 0..4 {
            seen.push(next_viewer_ceiling(*seen.last().unwrap()));
        }
        assert_eq!(seen, [0, 1000, 2500, 4000, 0]);
        assert_eq!(
            next_viewer_ceiling(1500),
            2500,
            "a ceiling from the command line steps up"
        );
        assert_eq!(next_viewer_ceiling(9000), 0);
        assert_eq!(
            (ceiling_name(0), ceiling_name(2500), ceiling_name(700)),
            (
                "no ceiling".to_string(),
                "at most medium".to_string(),
                "at most 700 kbit/s".to_string()
            )
        );
    }

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
    fn the_auto_ladder_is_a_third_and_an_eighth_at_halved_heights() {
        let high = resolve(Quality::High, Overrides::default(), None, 1);
        let l = ladder(&high, 1080, &Renditions::Auto);
        let got: Vec<(Option<u32>, u32)> = l.iter().map(|r| (r.max_height, r.bitrate_kbps)).collect();
        assert_eq!(got, [(Some(1080), 4000), (Some(540), 1333), (Some(270), 500)]);
        let low = resolve(Quality::Low, Overrides::default(), None, 1);
        let heights: Vec<_> = ladder(&low, 1080, &Renditions::Auto)
            .iter()
            .map(|r| r.max_height)
            .collect();
        assert_eq!(heights, [Some(480), Some(240), Some(180)], "no smaller than 180 lines");
        assert_eq!(ladder(&high, 1080, &Renditions::Off).len(), 1);
        let small = ladder(&high, 600, &Renditions::Auto);
        assert_eq!(small[1].max_height, Some(300), "from the source's height when smaller");
        let list: Renditions = "480:800, 240:300".parse().unwrap();
        let l = ladder(&high, 1080, &list);
        assert_eq!((l[1].max_height, l[1].bitrate_kbps), (Some(480), 800));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn renditions_parse_and_say_what_is_wrong() {
        assert_eq!("auto".parse::<Renditions>(), Ok(Renditions::Auto));
        assert_eq!("off".parse::<Renditions>(), Ok(Renditions::Off));
        assert!("480".parse::<Renditions>().unwrap_err().contains("HEIGHT:KBPS"));
        assert!("480:10".parse::<Renditions>().unwrap_err().contains("bitrate"));
        assert_eq!(viewer_ceiling_kbps(Quality::Low), 1000);
        assert_eq!(viewer_ceiling_kbps(Quality::Auto), 0);
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
