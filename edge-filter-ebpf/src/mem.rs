//! Word-at-a-time stores for map values and keys.
//!
//! Verifier: LLVM merges adjacent stores into `memset`/`memcpy`, and where it cannot
//! prove 8-byte alignment (a field at an odd offset, a byte array) it calls the
//! out-of-line versions from `compiler_builtins`: loops of byte stores, whose every
//! iteration the verifier walks again on every path that reaches them. On 5.10 and
//! 6.1 that alone took the program past the million-instruction limit. Volatile
//! stores are never merged, so each write below stays the one 8-byte store it is.
//!
//! Contract: every pointer handed in is 8-byte aligned (the fields named at each call
//! are at multiples of 8 in `#[repr(C, align(8))]` types) and valid for the words
//! written or read.

/// Zero `words` 8-byte words at `dst`.
///
/// # Safety
/// `dst` is 8-byte aligned and valid for writes of `words * 8` bytes.
#[inline(always)]
pub(crate) unsafe fn zero(dst: *mut u8, words: usize) {
    let dst = dst.cast::<u64>();
    for i in 0..words {
        // SAFETY: the caller's contract.
        unsafe { dst.add(i).write_volatile(0) };
    }
}

/// Copy `words` 8-byte words from `src` to `dst`.
///
/// # Safety
/// Both are 8-byte aligned and valid for `words * 8` bytes.
#[inline(always)]
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, words: usize) {
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..words {
        // SAFETY: the caller's contract.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// An address field (16 bytes at an 8-byte aligned offset) set to `addr`.
#[inline(always)]
pub(crate) fn set_addr(dst: &mut [u8; 16], addr: &[u8; 16]) {
    // SAFETY: every address field this is used on sits at a multiple of 8 in a
    // `#[repr(C, align(8))]` type (`FlowKey`, `SourceKey`, `Packet`); 16 bytes are
    // two words.
    unsafe { copy(dst.as_mut_ptr(), addr.as_ptr(), 2) }
}

/// An address field set to an IPv4 address (network order) and zeros after it: two
/// word stores, the first built in a register (a 4-byte volatile store of the array
/// would take it through the stack).
#[inline(always)]
pub(crate) fn set_addr4(dst: &mut [u8; 16], addr: [u8; 4]) {
    // The address's bytes first in memory, whichever the byte order.
    let word = u64::from(u32::from_ne_bytes(addr));
    let word = if cfg!(target_endian = "big") { word << 32 } else { word };
    // SAFETY: as in `set_addr`.
    unsafe {
        set_word(dst.as_mut_ptr(), word);
        set_word(dst.as_mut_ptr().add(8), 0);
    }
}

/// One 8-byte word at `dst`.
///
/// # Safety
/// `dst` is 8-byte aligned and valid for an 8-byte write.
#[inline(always)]
pub(crate) unsafe fn set_word(dst: *mut u8, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { dst.cast::<u64>().write_volatile(value) }
}
