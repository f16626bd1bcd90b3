//! The kernel programs live in the `edge-filter` binary target of this crate
//! (`src/main.rs`), built for the BPF target by `edge-filter/build.rs`. This empty
//! library only lets that build script depend on the crate, so cargo rebuilds the
//! object when its sources change.
#![no_std]
