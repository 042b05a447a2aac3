//! Kaelix cluster services.
//!
//! Protocol logic here is sans-IO (see `kaelix_core::sansio`): state
//! machines that take `now` and inputs and emit outputs. Each service also
//! has a thin async driver written against `kaelix_core::runtime::Runtime`,
//! so the very same node code runs under the simulator and the real
//! executor.
//!
//! Services: replicated broadcast ([`broadcast`]), the first workload the
//! simulator verifies; SWIM membership with Lifeguard ([`swim`], the sans-IO
//! core, and [`membership`], its driver) with a phi-accrual detector
//! ([`phi`]); sans-IO Raft ([`raft`]); partitions replicated by one Raft
//! group each ([`replicated`]: the sans-IO `replica::ReplicaCore` and its
//! driver `node::run_node`).

pub mod broadcast;
pub mod driver;
pub mod membership;
pub mod phi;
pub mod raft;
pub mod replicated;
pub mod swim;
