//! Node-to-node datagrams come from the network: decoding must never panic,
//! and whatever decodes must re-encode to the same bytes.
#![no_main]

use bytes::Bytes;
use kaelix_cluster::broadcast::wire::PeerMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = PeerMessage::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(&msg.encode()[..], data, "decode/encode is not a bijection");
    }
});
