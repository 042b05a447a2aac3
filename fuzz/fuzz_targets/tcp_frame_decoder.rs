//! Bytes from any TCP peer reach the frame decoder: fed in arbitrary
//! chunks, it must never panic, and every frame it returns must be exactly
//! what an encoder would have produced from the same bytes.
#![no_main]

use bytes::BytesMut;
use kaelix_runtime_real::frame::{CLIENT_MAGIC, FrameDecoder, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 32) + 1;
    let mut dec = FrameDecoder::new(1024, Some(CLIENT_MAGIC));
    let mut frames = Vec::new();
    let mut hello_seen = false;
    for piece in rest.chunks(chunk) {
        dec.extend(piece);
        if !hello_seen {
            match dec.next_hello() {
                Ok(Some(_)) => hello_seen = true,
                Ok(None) => continue,
                Err(_) => return,
            }
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // Re-encoding what was decoded reproduces the consumed input.
    if hello_seen {
        let mut again = BytesMut::new();
        for f in &frames {
            assert!(f.len() <= 1024);
            encode_frame(&mut again, f);
        }
        let consumed = rest.len() - 12 - dec.pending_bytes();
        assert_eq!(&again[..], &rest[12..12 + consumed]);
    }
});
