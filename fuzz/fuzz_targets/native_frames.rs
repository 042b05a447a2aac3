//! Native-protocol bytes come from any TCP peer: fed to the frame decoder
//! in arbitrary chunks, they must never panic it or the request and server
//! frame decoders; whatever decodes must re-encode to exactly its frame
//! (the encoding is canonical) and decode again to the same value.
#![no_main]

use bytes::BytesMut;
use kaelix_protocol::{FrameDecoder, Request, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 64) + 1;
    let mut decoder = FrameDecoder::new(64 * 1024);
    for piece in rest.chunks(chunk) {
        decoder.extend(piece);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            let mut raw = BytesMut::new();
            frame.encode(&mut raw);
            if let Ok(request) = Request::decode(&frame) {
                let mut again = BytesMut::new();
                request.encode(frame.correlation, &mut again);
                assert_eq!(again, raw, "request decode/encode is not a bijection");
                let mut redecoder = FrameDecoder::new(64 * 1024);
                redecoder.extend(&again);
                let reframed = redecoder.next_frame().expect("re-frames").expect("one whole frame");
                assert_eq!(Request::decode(&reframed).expect("re-decodes"), request);
            }
            if let Ok(server) = ServerFrame::decode(&frame) {
                let mut again = BytesMut::new();
                server.encode(&mut again);
                assert_eq!(again, raw, "server frame decode/encode is not a bijection");
                let mut redecoder = FrameDecoder::new(64 * 1024);
                redecoder.extend(&again);
                let reframed = redecoder.next_frame().expect("re-frames").expect("one whole frame");
                assert_eq!(ServerFrame::decode(&reframed).expect("re-decodes"), server);
            }
        }
    }
});
