//! Every decoder of the wire format and the ticket on arbitrary bytes: no panic, no
//! over-read, and whatever decodes re-encodes to the same bytes.
#![no_main]

use pixelpass_protocol::{Control, FrameMeta, GopHeader, encode_frame};
use pixelpass_protocol::psi_cache::PsiCache;
use pixelpass_protocol::ticket::Ticket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((msg, used))) = Control::decode(data) {
        assert!(used <= data.len());
        assert_eq!(msg.encode(), &data[..used]);
    }
    if let Ok(Some((h, used))) = GopHeader::decode(data) {
        assert_eq!(h.encode(), &data[..used]);
    }
    if let Ok(Some(((meta, range), used))) = FrameMeta::decode_frame(data) {
        assert!(range.end == used && used <= data.len());
        assert_eq!(encode_frame(&meta, &data[range]), &data[..used]);
    }
    if let Ok(t) = Ticket::from_bytes(data) {
        assert_eq!(Ticket::from_bytes(&t.to_bytes()), Ok(t.clone()));
        assert_eq!(t.to_string().parse::<Ticket>(), Ok(t));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<Ticket>();
    }
    let mut psi = PsiCache::default();
    psi.scan(data);
    let _ = psi.tables();
});
