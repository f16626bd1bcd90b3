//! Whole-map reads in batches: `BPF_MAP_LOOKUP_BATCH`, a few thousand entries per
//! system call, where aya's iterators make two calls per entry.
//!
//! Contract:
//! - [`for_each`] hands every entry present to the visitor, once per pass over the
//!   map (a hash map's entries added or removed meanwhile may be seen or not, as with
//!   any walk); per-CPU values arrive as one slice with a value per possible CPU.
//! - A kernel without batch reads for the map's type (before 5.6) gets the walk by
//!   key, so the answer never depends on the kernel, only its cost.
//! - Keys and values are plain data ([`aya::Pod`]) read from the kernel's bytes.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_GET_NEXT_KEY`, `BPF_MAP_LOOKUP_ELEM`: the walk by key.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The kernel's own "not supported" (`include/linux/errno.h`), which batch reads
/// return for map types without them.
const ENOTSUPP: i32 = 524;

/// Entries asked for per call; doubled when one hash bucket holds more.
const BATCH: u32 = 4096;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`, the element member (lookup, next key).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is the member of `union bpf_attr` that `cmd` reads, and every
    // pointer in it refers to a live buffer of the size the map's key and value need.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Visit every entry of `map`: keys `K`, values `V`, one value per possible CPU for
/// a per-CPU map, else one.
pub(crate) fn for_each<K: Pod, V: Pod>(map: &MapData, per_cpu: bool, mut visit: impl FnMut(&K, &[V])) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let cpus = if per_cpu { aya::util::nr_cpus().map_err(|(_, e)| e)? } else { 1 };
    // A per-CPU map's values are 8-byte aligned per CPU.
    let stride = if per_cpu { size_of::<V>().next_multiple_of(8) } else { size_of::<V>() };
    let value_len = stride * cpus;
    let mut cap = BATCH as usize;
    let mut keys = vec![0u8; cap * size_of::<K>()];
    let mut values = vec![0u8; cap * value_len];
    // The batch token: a bucket for hash maps, a key for arrays.
    let token_len = size_of::<K>().max(8);
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut first = true;
    let mut decoded: Vec<V> = Vec::with_capacity(cpus);
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: cap as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match &r {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than a batch: ask for more at once.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                cap *= 2;
                keys.resize(cap * size_of::<K>(), 0);
                values.resize(cap * value_len, 0);
                continue;
            }
            Err(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)) => {
                return walk_by_key(fd, cpus, stride, visit);
            }
            Err(_) => return r,
        };
        // The kernel wrote `count` keys and values.
        for i in 0..attr.count as usize {
            let key = &keys[i * size_of::<K>()..(i + 1) * size_of::<K>()];
            decode(key, &values[i * value_len..(i + 1) * value_len], stride, &mut decoded, &mut visit);
        }
        if done {
            return Ok(());
        }
        first = false;
        std::mem::swap(&mut token_in, &mut token_out);
    }
}

/// The walk by key, two calls per entry, for kernels without batch reads.
fn walk_by_key<K: Pod, V: Pod>(fd: u32, cpus: usize, stride: usize, mut visit: impl FnMut(&K, &[V])) -> io::Result<()> {
    let mut key = vec![0u8; size_of::<K>()];
    let mut next = vec![0u8; size_of::<K>()];
    let mut value = vec![0u8; stride * cpus];
    let mut first = true;
    let mut decoded: Vec<V> = Vec::with_capacity(cpus);
    loop {
        let mut attr =
            ElemAttr { map_fd: fd, key: if first { 0 } else { key.as_ptr() as u64 }, value_or_next: next.as_mut_ptr() as u64, ..ElemAttr::default() };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = ElemAttr { map_fd: fd, key: key.as_ptr() as u64, value_or_next: value.as_mut_ptr() as u64, ..ElemAttr::default() };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => {}
            // Gone between listing its key and reading it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        decode(&key, &value, stride, &mut decoded, &mut visit);
    }
}

/// One entry as the kernel wrote it, decoded for `visit`: `key` a `K`'s bytes, `value`
/// a `V` every `stride` bytes (one per CPU for a per-CPU map).
fn decode<K: Pod, V: Pod>(key: &[u8], value: &[u8], stride: usize, decoded: &mut Vec<V>, visit: &mut impl FnMut(&K, &[V])) {
    assert!(key.len() == size_of::<K>() && stride >= size_of::<V>() && value.len().is_multiple_of(stride), "a map entry of another layout");
    // SAFETY: `key` holds `size_of::<K>()` bytes and each chunk of `value` at least
    // `size_of::<V>()` (asserted above); K and V are plain data, read unaligned.
    let k: K = unsafe { key.as_ptr().cast::<K>().read_unaligned() };
    decoded.clear();
    decoded.extend(value.chunks_exact(stride).map(|c| unsafe { c.as_ptr().cast::<V>().read_unaligned() }));
    visit(&k, decoded);
}
