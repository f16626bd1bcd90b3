//! The clock of the state tables and the drop log: `CLOCK_MONOTONIC` in
//! nanoseconds, the clock userspace judges flows' idle times by, read on most
//! packets without a call.
//!
//! `bpf_ktime_get_ns` is a helper call, and every call out of the program pays a
//! return thunk on CPUs with that mitigation. `bpf_jiffies64` is not a call: the
//! verifier turns it into a load of `jiffies` on 64-bit JITs. Jiffies count the
//! ticks the timekeeping code keeps from the monotonic clock itself, so the time is
//! the last reading of the real clock plus the jiffies since, each the length this
//! CPU measured between two readings. Nothing assumes the kernel's `HZ`.
//!
//! Contract:
//! - Until a CPU has measured a jiffy ([`CALIBRATE`] jiffies after its first
//!   reading), every `now` there reads the real clock.
//! - After that, the real clock is read again once [`REFRESH`] jiffies have passed
//!   since the last reading, which also measures the jiffy again over that longer
//!   span. In between the time is off by at most a tick for the phase of each
//!   reading plus the measurement's error over the span: a jiffy measured over `n`
//!   is off by at most one part in `n`, so at most 1024 / 256 = 4 ticks before the
//!   first refresh and one after. At HZ 250, 20 ms then 8 ms, against timeouts of
//!   seconds.
//! - The estimate may run a few ticks ahead of a later real reading, and CPUs may
//!   differ by as much: every comparison of two times saturates, so a time a little
//!   in the future reads as "now".
//! - The state is per CPU and used by one program at a time on it: XDP runs in
//!   softirq context, TC egress with bottom halves off.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Jiffies after a CPU's first reading at which it measures the jiffy (about a
/// second at HZ 250).
const CALIBRATE: u64 = 256;
/// Jiffies after which the real clock is read again (1024: about four seconds at
/// HZ 250, one at HZ 1000).
const REFRESH: u64 = 1024;

/// A CPU's last reading of the real clock, and the length of a jiffy.
#[repr(C)]
pub(crate) struct Reading {
    /// `jiffies` at the reading; 0 before the first.
    jiffies: u64,
    /// The real clock at the reading.
    ns: u64,
    /// Nanoseconds per jiffy as last measured; 0 until measured.
    jiffy_ns: u64,
}

/// Index 0 -> this CPU's [`Reading`]. The program's own: userspace neither reads
/// nor writes it, and a new program starts measuring again.
#[map]
static CLOCK: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

/// The current time (see the module comment for how close it is).
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects, which the verifier inlines.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(r) = CLOCK.get_ptr_mut(0) else {
        return real();
    };
    // SAFETY: a per-CPU slot, valid for this run and used by this run only (see the
    // module comment).
    let r = unsafe { &mut *r };
    let since = jiffies.wrapping_sub(r.jiffies);
    if r.jiffy_ns != 0 && since < REFRESH {
        return r.ns + since * r.jiffy_ns;
    }
    let ns = real();
    if r.jiffies == 0 {
        r.jiffies = jiffies;
        r.ns = ns;
    } else if since >= CALIBRATE {
        r.jiffy_ns = ns.saturating_sub(r.ns) / since;
        r.jiffies = jiffies;
        r.ns = ns;
    }
    ns
}

/// The real clock: a helper call.
#[inline(always)]
fn real() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}
