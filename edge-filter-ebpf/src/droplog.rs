//! The drop log: dropped packets (and would-be drops in dry-run) reported through the
//! aya-log ring, with the NIC, the reason, the protocol, addresses and ports.
//!
//! Records carry the verdict as its number and the NIC as its ifindex; the daemon
//! names both (`drop/no_rule`, `eth0`).
//!
//! Contract: off unless the `DROP_LOG` setting is on; at most `drop_log_per_sec` lines
//! per second and CPU, enforced here with a per-CPU window, so a flood cannot flood
//! the log; what the limit keeps quiet is counted (`event::DROP_LOG_SUPPRESSED`). The
//! hot path pays one flag test when the log is off.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use aya_log_ebpf::warn;
use edge_filter_common::{FlowKey, NS_PER_SEC, Settings, event, family, flags, verdict};

use crate::{clock, counters::count_event as bump, maps::LOG_BUDGET, mem, parse::Packet};

/// Index 0 -> the tuple of the drop being judged on this CPU, in the packet's own
/// direction (`family` 0 when it had none: malformed, not IP). Scratch space of this
/// program only: it keeps the tuple off the stack between `remember` and `report`.
#[map]
static DROP_TUPLE: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Keep the tuple of a packet the policy drops, for [`report`].
#[inline(always)]
pub(crate) fn remember(settings: &Settings, p: Option<&Packet>) {
    if settings.flags & flags::DROP_LOG == 0 {
        return;
    }
    let Some(t) = DROP_TUPLE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, valid for this run and written by this CPU only.
    let t = unsafe { &mut *t };
    match p {
        Some(p) => {
            t.family = p.family;
            t.proto = p.proto;
            t.sport_be = p.sport_be;
            t.dport_be = p.dport_be;
            mem::set_addr(&mut t.src, &p.src);
            mem::set_addr(&mut t.dst, &p.dst);
        }
        None => t.family = 0,
    }
}

/// Whether the budget of this CPU allows one more line now.
#[inline(always)]
fn allowed(settings: &Settings) -> bool {
    let Some(b) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as in `bump`.
    let b = unsafe { &mut *b };
    let now = clock::now();
    if now.saturating_sub(b.window_ns) >= NS_PER_SEC {
        b.window_ns = now;
        b.used = 0;
    }
    if b.used >= settings.drop_log_per_sec {
        return false;
    }
    b.used += 1;
    true
}

/// Report a drop verdict `v` (before dry-run turns it into `would_drop`), with the
/// tuple [`remember`] kept.
///
/// Verifier: a function of its own; see `policy::tracked`.
#[inline(never)]
pub(crate) fn report(ctx: &XdpContext, settings: &Settings, ifindex: u32, v: u32) {
    if settings.flags & flags::DROP_LOG == 0 {
        return;
    }
    if !allowed(settings) {
        bump(event::DROP_LOG_SUPPRESSED);
        return;
    }
    bump(event::DROP_LOGGED);
    // The verdict goes as its number: userspace names it. A string chosen at run time
    // would be copied with a length older verifiers (5.10, 6.1) cannot tie to the
    // string, and they refuse the program.
    let v = if settings.flags & flags::DRY_RUN != 0 { v + verdict::DRY_RUN_OFFSET } else { v };
    let Some(t) = DROP_TUPLE.get_ptr(0) else {
        return;
    };
    // SAFETY: as in `remember`.
    let t = unsafe { &*t };
    let (sport, dport) = (u16::from_be(t.sport_be), u16::from_be(t.dport_be));
    if t.family == family::V4 {
        let (src, dst) = ([t.src[0], t.src[1], t.src[2], t.src[3]], [t.dst[0], t.dst[1], t.dst[2], t.dst[3]]);
        warn!(ctx, "verdict {} ifindex {} proto {} {:i}:{} -> {:i}:{}", v, ifindex, t.proto, src, sport, dst, dport);
    } else if t.family == family::V6 {
        warn!(ctx, "verdict {} ifindex {} proto {} [{:i}]:{} -> [{:i}]:{}", v, ifindex, t.proto, t.src, sport, t.dst, dport);
    } else {
        warn!(ctx, "verdict {} ifindex {}", v, ifindex);
    }
}
