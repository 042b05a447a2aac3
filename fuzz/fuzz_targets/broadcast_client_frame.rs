//! Client frames come from untrusted clients: decoding must never panic and
//! must round-trip.
#![no_main]

use bytes::Bytes;
use kaelix_cluster::broadcast::wire::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::decode(Bytes::copy_from_slice(data)) {
        let again = ClientFrame::decode(frame.encode()).expect("re-decodes");
        assert_eq!(again, frame);
    }
});
