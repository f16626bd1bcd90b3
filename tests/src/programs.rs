//! The kernel programs of the tests and the benchmark, not part of the filter, built
//! from `tests/ebpf` by `build.rs` and embedded here.
//!
//! Contract: each object is loaded with `aya::Ebpf::load` and carries the XDP programs
//! named below; neither reads nor writes any map of the filter.

/// The traffic generator (`tests/ebpf/src/gen.rs`): an XDP program named
/// `traffic_gen` to run in live-frames mode.
pub static TRAFFIC_GEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traffic-gen"));

/// The benchmark floor (`tests/ebpf/src/floor.rs`): XDP programs `floor_pass` and
/// `floor_drop`, which return their action without reading the frame.
pub static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));
