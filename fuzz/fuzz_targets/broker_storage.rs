//! Durable-topic files come back from disk after crashes and torn writes:
//! scanning frames must never panic and must stop at the first damaged
//! frame; a metadata record that decodes must re-encode to exactly its
//! bytes (one encoding per value).
#![no_main]

use bytes::{Bytes, BytesMut};
use kaelix_broker::message::Message;
use kaelix_broker::storage::{MetaRecord, put_frame, scan_frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let scan = scan_frames(&input);
    assert!(scan.valid_len as usize <= data.len());
    // The intact prefix re-frames to exactly the bytes it spans.
    let mut again = BytesMut::new();
    for body in &scan.bodies {
        put_frame(&mut again, body);
        let _ = Message::decode(body);
        if let Ok(record) = MetaRecord::decode(body) {
            assert_eq!(record.encode(), *body, "meta record encoding is not canonical");
        }
    }
    assert_eq!(&again[..], &data[..scan.valid_len as usize]);
    assert_eq!(scan.damage.is_none(), scan.valid_len as usize == data.len());
    if let Ok(record) = MetaRecord::decode(&input) {
        assert_eq!(record.encode(), input);
    }
});
