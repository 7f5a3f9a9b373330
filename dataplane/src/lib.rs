//! fsroute's data plane: the zero-copy SIP scanner, the sans-IO stateless router, the dispatcher
//! algorithms, the immutable routing table the control plane swaps in, and the glommio shard shell
//! that binds one UDP socket per core and drives the router.

pub mod admission;
pub mod dispatch;
pub mod hash;
pub mod lb;
pub mod router;
pub mod shard;
pub mod sip;
pub mod socket;
pub mod stats;
pub mod table;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
