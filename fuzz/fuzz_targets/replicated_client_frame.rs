//! Client frames of replicated partitions: decoding arbitrary bytes never
//! panics, and whatever decodes re-encodes to the same bytes (the format is
//! canonical).
#![no_main]

use bytes::Bytes;
use kaelix_cluster::replicated::protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(r) = Request::decode(bytes.clone()) {
        assert_eq!(r.encode(), bytes);
    }
    if let Ok(r) = Response::decode(bytes.clone()) {
        assert_eq!(r.encode(), bytes);
    }
});
