//! The log scanner reads whatever a crashed or corrupted disk left: it must
//! never panic, its valid prefix must be exactly the records it returns,
//! and re-scanning that prefix must give the same records.
#![no_main]

use bytes::Bytes;
use kaelix_cluster::broadcast::log::{StopReason, encode_record, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = scan(Bytes::copy_from_slice(data), true);
    assert!(s.valid_len as usize <= data.len());
    let rebuilt: Vec<u8> = s.values.iter().flat_map(|v| encode_record(v).to_vec()).collect();
    assert_eq!(&rebuilt[..], &data[..s.valid_len as usize]);
    let again = scan(Bytes::from(rebuilt), true);
    assert_eq!(again.values, s.values);
    assert_eq!(again.stop, StopReason::Clean);
});
