//! The ticket as a QR code in the terminal, two modules per character cell (half blocks), so a
//! phone camera or a second screen can read it.

use anyhow::{Context, Result};
use qrcode::{Color, EcLevel, QrCode};

/// Light modules around the code: scanners need a margin.
pub const QUIET: usize = 2;

/// The QR code of `ticket` as its modules, without the quiet zone: the width and, row-major,
/// whether each module is dark. Upper case (tickets read either case), for QR's denser
/// alphanumeric mode. The terminal and the window draw this one code.
pub fn modules(ticket: &str) -> Result<(usize, Vec<bool>)> {
    let code = QrCode::with_error_correction_level(ticket.to_ascii_uppercase(), EcLevel::L)
        .context("the ticket does not fit in a QR code")?;
    let dark = code.to_colors().into_iter().map(|c| c == Color::Dark).collect();
    Ok((code.width(), dark))
}

/// The QR code of `ticket`, one string per terminal line. The ticket is upper-cased (tickets
/// read either case) so it fits QR's denser alphanumeric mode. Light modules are drawn as
/// blocks in white on black, so the code reads right on dark and light terminals alike.
pub fn render(ticket: &str) -> Result<Vec<String>> {
    let (w, dark) = modules(ticket)?;
    let light = |x: usize, y: usize| -> bool {
        let inside = x >= QUIET && y >= QUIET && x < w + QUIET && y < w + QUIET;
        !inside || !dark[(y - QUIET) * w + (x - QUIET)]
    };
    let size = w + 2 * QUIET;
    let lines = (0..size.div_ceil(2))
        .map(|row| {
            let cells: String = (0..size)
                .map(|x| {
                    let top = light(x, 2 * row);
                    // The last row of an odd size: its lower half is past the code, light.
                    let bottom = 2 * row + 1 >= size || light(x, 2 * row + 1);
                    match (top, bottom) {
                        (true, true) => '█',
                        (true, false) => '▀',
                        (false, true) => '▄',
                        (false, false) => ' ',
                    }
                })
                .collect();
            format!("\x1b[97;40m{cells}\x1b[0m")
        })
        .collect();
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modules of a rendered code, read back from its characters (row-major, true = dark),
    /// with the code's width including the quiet zone. For checks: what a camera would see.
    fn modules(lines: &[String]) -> (usize, Vec<bool>) {
        let rows: Vec<Vec<char>> = lines.iter().map(|l| strip_ansi(l).chars().collect()).collect();
        let size = rows.first().map_or(0, Vec::len);
        let mut dark = Vec::with_capacity(size * size);
        for y in 0..size {
            for x in 0..size {
                let c = rows.get(y / 2).and_then(|r| r.get(x)).copied().unwrap_or('█');
                let light = matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1));
                dark.push(!light);
            }
        }
        (size, dark)
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn ticket() -> String {
        gstiroh::ticket::Ticket {
            addr: iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[7; 32]).public())
                .with_ip_addr("192.168.1.20:40000".parse().unwrap()),
            secret: [3; 16],
        }
        .to_string()
    }

    #[test]
    fn the_printed_block_has_the_size_of_the_tickets_version() {
        let t = ticket();
        let lines = render(&t).unwrap();
        let code = QrCode::with_error_correction_level(t.to_ascii_uppercase(), EcLevel::L).unwrap();
        let qrcode::Version::Normal(v) = code.version() else {
            panic!("a normal QR code")
        };
        let size = 17 + 4 * v as usize + 2 * QUIET;
        assert_eq!(lines.len(), size.div_ceil(2));
        assert!(lines.iter().all(|l| strip_ansi(l).chars().count() == size));
        assert!(size <= 80, "fits a terminal: {size} columns for {} characters", t.len());
    }

    #[test]
    fn the_printed_code_decodes_to_the_ticket() {
        let t = ticket();
        let (size, dark) = modules(&render(&t).unwrap());
        let decoded = decode(size, &dark).expect("a QR code is found and decodes");
        assert_eq!(decoded.to_ascii_lowercase(), t);
        assert!(
            decoded.parse::<gstiroh::ticket::Ticket>().is_ok(),
            "the upper-case form parses"
        );
    }

    /// Decodes modules with rqrr, scaled to pixels as a camera would see them.
    pub(crate) fn decode(size: usize, dark: &[bool]) -> Option<String> {
        const PX: usize = 4;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(size * PX, size * PX, |x, y| {
            if dark[(y / PX) * size + x / PX] { 0 } else { 255 }
        });
        let grids = img.detect_grids();
        grids.first()?.decode().ok().map(|(_, s)| s)
    }
}
