//! The Raft WAL scan reads whatever a crashed or corrupted disk left: it
//! must never panic, its valid prefix must lie within the input, and
//! re-scanning exactly that prefix must recover the same state, cleanly.
#![no_main]

use bytes::Bytes;
use kaelix_cluster::raft::disk::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = scan(Bytes::copy_from_slice(data)) else { return };
    assert!(s.valid_len as usize <= data.len());
    let again = scan(Bytes::copy_from_slice(&data[..s.valid_len as usize])).expect("the valid prefix is a generation");
    assert_eq!(again.state, s.state);
    assert_eq!(again.valid_len, s.valid_len);
    assert!(!again.lost_synced);
});
