//! Integration tests of the cluster services: the membership service end to
//! end under the simulator, and the SWIM transcripts.

mod membership;
mod raft_harness;
mod raft_transcripts;
mod swim_transcripts;
mod transcript;
