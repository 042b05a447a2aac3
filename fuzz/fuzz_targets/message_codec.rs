//! Encoded messages come from producers and from disk: decoding must never
//! panic, whatever decodes must re-encode to exactly the input (the
//! encoding is canonical), and the re-encoding must decode to the same
//! message.
#![no_main]

use bytes::Bytes;
use kaelix_broker::message::{CompactMessage, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    if let Ok(msg) = Message::decode(&input) {
        assert_eq!(msg.encoded_len(), data.len());
        let again = msg.encode_to_bytes();
        assert_eq!(again, input, "decode/encode is not a bijection");
        assert_eq!(Message::decode(&again).expect("re-decodes"), msg);
    }
    if let Ok(msg) = CompactMessage::decode(&input) {
        assert_eq!(msg.encoded_len(), data.len());
        let again = msg.encode_to_bytes();
        assert_eq!(again, input, "decode/encode is not a bijection");
        assert_eq!(CompactMessage::decode(&again).expect("re-decodes"), msg);
    }
});
