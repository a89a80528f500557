//! The shared protocol crate and the page's pure parts as the browser runs them: compiled to
//! wasm32 and run under Node by wasm-bindgen-test-runner
//! (`CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//! cargo test -p pixelpass-web --target wasm32-unknown-unknown --test wasm`).
#![cfg(all(target_family = "wasm", target_os = "unknown"))]

use iroh_base::{EndpointAddr, RelayUrl, SecretKey, TransportAddr};
use pixelpass_protocol::ticket::Ticket;
use pixelpass_protocol::{Control, FrameMeta, GopHeader, RenditionInfo, encode_frame, flags};
use pixelpass_web::codec;
use pixelpass_web::demux::{Demuxer, Unit};
use pixelpass_web::messages::{self, NO_RELAY};
use wasm_bindgen_test::wasm_bindgen_test;

fn ticket(relay: bool) -> String {
    let mut addr = EndpointAddr::new(SecretKey::from_bytes(&[7; 32]).public());
    if relay {
        addr.addrs.insert(TransportAddr::Relay(
            "https://relay.example/".parse::<RelayUrl>().unwrap(),
        ));
    }
    Ticket { addr, secret: [5; 16] }.to_string()
}

#[wasm_bindgen_test]
fn tickets_parse_and_need_a_relay() {
    let t = ticket(true);
    let parsed = messages::browser_ticket(&format!("https://example.org/#{t}")).unwrap();
    assert_eq!(parsed.to_string(), t);
    assert_eq!(parsed.secret, [5; 16]);
    assert_eq!(messages::browser_ticket(&ticket(false)), Err(NO_RELAY.to_string()));
    assert!(messages::browser_ticket("pp1zzzz").is_err());
}

#[wasm_bindgen_test]
fn control_and_gop_streams_round_trip() {
    let msgs = [
        Control::Hello2 {
            secret: [1; 16],
            name: "browser".into(),
            max_kbps: 0,
        },
        Control::Welcome2 {
            viewer_id: 3,
            renditions: vec![RenditionInfo {
                name: "480p".into(),
                kbps: 1000,
            }],
        },
        Control::Progress {
            seq: 9,
            capture_unix_ns: 1_795_000_000_123_456_789,
        },
        Control::KeyframeRequest,
    ];
    for m in msgs {
        let b = m.encode();
        assert_eq!(Control::decode(&b), Ok(Some((m, b.len()))));
    }
    let h = GopHeader {
        seq: 7,
        caps: "video/mpegts".into(),
        rendition: Some(0),
    };
    let b = h.encode();
    assert_eq!(GopHeader::decode(&b), Ok(Some((h, b.len()))));
    let meta = FrameMeta {
        flags: flags::DELTA,
        pts: Some(u64::MAX),
        capture_unix_ns: Some(1_795_000_000_000_000_000),
        ..Default::default()
    };
    let f = encode_frame(&meta, &[0x47; 376]);
    let ((m, range), used) = FrameMeta::decode_frame(&f).unwrap().unwrap();
    assert_eq!((m, range.len(), used), (meta, 376, f.len()));
}

#[wasm_bindgen_test]
fn a_ts_access_unit_comes_out_whole() {
    // PAT (program 1 → PMT 0x20), PMT (H.264 on 0x41), one PES with an SPS and an IDR.
    let mut ts = Vec::new();
    ts.extend(packet(0, &section(&[0, 0, 0, 0, 1, 0xc1, 0, 0, 0, 1, 0xe0, 0x20])));
    ts.extend(packet(
        0x20,
        &section(&[
            2, 0, 0, 0, 1, 0xc1, 0, 0, 0xe0, 0x41, 0xf0, 0, 0x1b, 0xe0, 0x41, 0xf0, 0,
        ]),
    ));
    let au = [0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac, 0, 0, 1, 0x65, 0x88];
    let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
    pes.extend_from_slice(&au);
    ts.extend(packet(0x41, &pes));
    let mut d = Demuxer::default();
    let mut out = Vec::new();
    d.push(&ts, &mut out);
    d.flush(&mut out);
    assert_eq!(
        out,
        [Unit::Video {
            pts: Some(0),
            key: true,
            codec: Some("avc1.64001F".into()),
            data: au.to_vec()
        }]
    );
    assert_eq!(codec::h264_codec(&au).as_deref(), Some("avc1.64001F"));
}

/// A section with its length filled in and a dummy CRC, after a pointer field.
fn section(s: &[u8]) -> Vec<u8> {
    let mut s = s.to_vec();
    let len = s.len() - 3 + 4;
    s[1] = 0xb0 | (len >> 8) as u8;
    s[2] = len as u8;
    s.extend_from_slice(&[1, 2, 3, 4]);
    let mut p = vec![0];
    p.extend(s);
    p
}

/// One TS packet starting a payload on `pid`, padded by an adaptation field.
fn packet(pid: u16, payload: &[u8]) -> Vec<u8> {
    let af = 188 - 5 - payload.len();
    let mut p = vec![0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x30, af as u8];
    if af > 0 {
        p.push(0);
        p.resize(5 + af, 0xff);
    }
    p.extend_from_slice(payload);
    assert_eq!(p.len(), 188);
    p
}
