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
//! ([`phi`]). Raft and replicated partitions come with their own issues.

pub mod broadcast;
pub mod driver;
pub mod membership;
pub mod phi;
pub mod raft;
pub mod replicated;
pub mod swim;
