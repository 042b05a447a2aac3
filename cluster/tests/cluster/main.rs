//! Integration tests of the cluster services: the membership service end to
//! end under the simulator, the SWIM, Raft and replicated-partition
//! transcripts (one runner, [`transcript`]), a replicated node that cannot
//! listen for clients, and one test per rule of the
//! Raft paper's Figure 2.

mod broadcast_node;
mod membership;
mod raft_harness;
mod raft_paper;
mod raft_transcripts;
mod replica_transcripts;
mod replicated_node;
mod swim_transcripts;
mod transcript;
