//! The kernel programs of the tests and the benchmark, not part of the filter: the
//! traffic generator (`traffic-gen`, `src/gen.rs`) and the benchmark's floor (`floor`,
//! `src/floor.rs`), each a binary target of this crate, built for the BPF target by
//! `tests/build.rs` and embedded as `edge_filter_tests::programs`. This library lets that
//! build script depend on the crate, so cargo rebuilds the objects when their sources
//! change, and holds what both programs link: the panic handler.
#![no_std]

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is dead code.
    loop {}
}
