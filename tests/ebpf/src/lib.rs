//! The kernel programs of the tests and the benchmark, not part of the filter: the
//! traffic generator (`traffic-gen`, `src/gen.rs`) and the benchmark's floor (`floor`,
//! `src/floor.rs`), each a binary target of this crate, built for the BPF target by
//! `tests/build.rs` and embedded as `edge_filter_tests::programs`. This empty library
//! only lets that build script depend on the crate, so cargo rebuilds the objects when
//! their sources change.
#![no_std]
