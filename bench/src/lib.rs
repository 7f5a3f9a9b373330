//! fsroute's benchmark harness as a library: the UAC load generator (`uac`), a light built-in
//! UAS (`uas`), the bare UDP relay (`relay`), the peers under test as child processes
//! (`peers`), and the scenarios (`throughput`, `transport`, `single_peer`, `fs_aware`, `reload`, `soak`). The
//! `fsroute-bench` binary is a clap shell over it, and `fsroute demo` calls [`demo::demo`].
//! Everything runs on loopback (127.0.0.0/8) only.

pub mod common;
pub mod demo;
pub mod fs_aware;
pub mod peers;
pub mod plot;
pub mod relay;
pub mod reload;
pub mod report;
pub mod single_peer;
pub mod soak;
pub mod sipmsg;
pub mod sys;
pub mod throughput;
pub mod transport;
pub mod uac;
pub mod uas;

pub use common::Opts;
pub use demo::demo;
