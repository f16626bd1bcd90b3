//! An eBPF interpreter for counting what the XDP program does on one frame: the
//! instructions it executes and the calls that leave it, per verdict path, so that a
//! regression in the program's cost shows as a number. The machine the benchmark runs
//! on has no ftrace or kprobes and always JITs, so the kernel cannot be asked; the
//! program's own bytecode is run here instead, against the loaded filter's maps.
//!
//! Contract:
//! - The bytecode is the object's, relocated the way aya's loader relocates it (maps,
//!   then BPF-to-BPF calls), before the verifier's rewrites: counts are of the program
//!   as compiled, not of what the JIT emits (the verifier inlines array lookups,
//!   rewrites context accesses, may patch helpers).
//! - [`Trace::insns`] counts every instruction executed, `ld_imm64` once, `call` and
//!   `exit` included. Calls that leave the program: [`Trace::helper_calls`], every
//!   helper call that stays a call at run time, which is every helper except map
//!   lookups in ARRAY and PERCPU_ARRAY maps (the verifier inlines those; they are
//!   [`Trace::inlined_lookups`]); and [`Trace::subprog_calls`], the BPF-to-BPF calls
//!   (`memcpy`, `memset` and the like included).
//! - Map lookups read through to the kernel's maps (BPF_MAP_LOOKUP_ELEM, CPU 0's value
//!   of a per-CPU map). What the program then writes, and every update and delete,
//!   stays in an overlay local to the emulator: the kernel's state is never changed.
//!   A value looked up once keeps its address and the program's writes to it for the
//!   life of the emulator (or until [`Emulator::reset`]). A map the filter does not
//!   hold (the log ring) is local only.
//! - Memory is a set of bounds-checked regions below 2^32 (the context holds 32-bit
//!   packet pointers): context, packet, one 512-byte stack per call frame, data maps,
//!   map values. An access outside them, an unknown instruction or helper, or a run
//!   past [`MAX_INSNS`] is an error naming the pc: the verifier accepts none of these,
//!   so each means the emulator is wrong, never the program.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::{AsRawFd as _, OwnedFd},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya_obj::generated::bpf_map_type::{
    self, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_HASH,
};

/// Instructions one run may execute before it is called a runaway.
pub const MAX_INSNS: u64 = 1_000_000;

/// What one run of the program did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The XDP action (r0 at the last `exit`).
    pub action: u32,
    /// Instructions executed (`ld_imm64` counts once).
    pub insns: u64,
    /// Helper calls that are real calls at run time: all but array lookups.
    pub helper_calls: u64,
    /// Map lookups in ARRAY and PERCPU_ARRAY maps, which the verifier inlines.
    pub inlined_lookups: u64,
    /// BPF-to-BPF calls (`src_reg` 1), `memcpy` and `memset` included.
    pub subprog_calls: u64,
    /// Helper id -> calls, every helper call (inlined lookups included).
    pub by_helper: BTreeMap<u32, u64>,
    /// Instruction index (in the relocated program) -> times executed: where the
    /// instructions go, to be read beside the object's line table.
    pub by_pc: BTreeMap<usize, u64>,
}

/// One decoded instruction (`struct bpf_insn`: opcode, registers, offset, immediate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self { code, dst, src, off, imm }
    }
}

/// Helper ids the object calls.
mod helper {
    pub(super) const MAP_LOOKUP_ELEM: u32 = 1;
    pub(super) const MAP_UPDATE_ELEM: u32 = 2;
    pub(super) const MAP_DELETE_ELEM: u32 = 3;
    pub(super) const KTIME_GET_NS: u32 = 5;
    pub(super) const JIFFIES64: u32 = 118;
    pub(super) const RINGBUF_OUTPUT: u32 = 130;
    pub(super) const RINGBUF_RESERVE: u32 = 131;
    pub(super) const RINGBUF_SUBMIT: u32 = 132;
    pub(super) const RINGBUF_DISCARD: u32 = 133;
    pub(super) const XDP_GET_BUFF_LEN: u32 = 188;
}

const ENOENT: i64 = 2;
const E2BIG: i64 = 7;
const EEXIST: i64 = 17;
const EINVAL: i64 = 22;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// The jiffy of the emulated kernel (HZ 250).
const JIFFY_NS: u64 = 4_000_000;

/// Fake descriptors given to the relocation: map `i` is `FD_BASE + i`.
const FD_BASE: i32 = 1000;
/// Where the regions live (all below 2^32).
const CTX_BASE: u64 = 0x1000_0000;
const PACKET_BASE: u64 = 0x2000_0000;
const STACK_BASE: u64 = 0x3000_0000;
const STACK_SIZE: u64 = 512;
/// Room per stack frame (the gap catches overruns).
const STACK_STRIDE: u64 = 0x1000;
const DATA_BASE: u64 = 0x4000_0000;
const DATA_STRIDE: u64 = 0x10_0000;
const VALUE_BASE: u64 = 0x5000_0000;
const VALUE_END: u64 = 0xe000_0000;
/// Map handles (`ld_imm64` of a map): `HANDLE_BASE + 16 * i`, in no region.
const HANDLE_BASE: u64 = 0xf000_0000;
/// The deepest call chain the verifier allows.
const MAX_FRAMES: usize = 8;

/// A map as the emulator sees it.
#[derive(Debug)]
pub struct EmuMap {
    /// The map's name in the object.
    pub name: String,
    pub map_type: bpf_map_type,
    /// Key and value sizes in bytes, and entries, as the object defines them.
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// The kernel's map, read through on lookups; `None`: local only.
    real: Option<OwnedFd>,
    /// For a data map (.rodata, .bss, .data): its initial contents.
    data: Option<Vec<u8>>,
    /// Key -> value address, or deleted here.
    overlay: HashMap<Vec<u8>, Slot>,
}

impl EmuMap {
    /// A map with no kernel counterpart.
    pub fn local(name: &str, map_type: bpf_map_type, key_size: u32, value_size: u32, max_entries: u32) -> Self {
        Self { name: name.into(), map_type, key_size, value_size, max_entries, real: None, data: None, overlay: HashMap::new() }
    }

    fn is_array(&self) -> bool {
        matches!(self.map_type, BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY)
    }

    fn is_per_cpu(&self) -> bool {
        matches!(self.map_type, BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH)
    }

    fn is_hash(&self) -> bool {
        matches!(self.map_type, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH | BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH)
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Value(u64),
    Deleted,
}

/// A bounds-checked piece of memory.
#[derive(Debug)]
struct Region {
    bytes: Vec<u8>,
    writable: bool,
    what: &'static str,
}

/// The flat address space.
#[derive(Debug, Default)]
struct Memory {
    regions: BTreeMap<u64, Region>,
    next_value: u64,
}

impl Memory {
    fn add(&mut self, base: u64, bytes: Vec<u8>, writable: bool, what: &'static str) {
        self.regions.insert(base, Region { bytes, writable, what });
    }

    /// A fresh map value region holding `bytes`; its address.
    fn alloc(&mut self, bytes: Vec<u8>) -> anyhow::Result<u64> {
        let base = self.next_value.max(VALUE_BASE);
        let end = base + bytes.len() as u64;
        ensure!(end < VALUE_END, "the emulator ran out of room for map values");
        // 64 bytes of nothing between values, 8-aligned.
        self.next_value = (end + 64 + 7) & !7;
        self.add(base, bytes, true, "map value");
        Ok(base)
    }

    fn slice(&self, addr: u64, len: usize) -> anyhow::Result<&[u8]> {
        let (base, r) = self.regions.range(..=addr).next_back().ok_or_else(|| anyhow!("{len} bytes at {addr:#x}: no memory there"))?;
        let at = (addr - base) as usize;
        ensure!(at + len <= r.bytes.len(), "{len} bytes at {addr:#x}: outside the {} at {base:#x} ({} bytes)", r.what, r.bytes.len());
        Ok(&r.bytes[at..at + len])
    }

    fn slice_mut(&mut self, addr: u64, len: usize) -> anyhow::Result<&mut [u8]> {
        let (base, r) = self.regions.range_mut(..=addr).next_back().ok_or_else(|| anyhow!("{len} bytes at {addr:#x}: no memory there"))?;
        let at = (addr - base) as usize;
        ensure!(at + len <= r.bytes.len(), "{len} bytes at {addr:#x}: outside the {} at {base:#x} ({} bytes)", r.what, r.bytes.len());
        ensure!(r.writable, "a write of {len} bytes at {addr:#x}: the {} is read-only", r.what);
        Ok(&mut r.bytes[at..at + len])
    }

    fn load(&self, addr: u64, size: usize) -> anyhow::Result<u64> {
        let b = self.slice(addr, size)?;
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }

    fn store(&mut self, addr: u64, size: usize, value: u64) -> anyhow::Result<()> {
        self.slice_mut(addr, size)?.copy_from_slice(&value.to_le_bytes()[..size]);
        Ok(())
    }
}

/// The XDP program's bytecode and the maps it uses, ready to run frames.
pub struct Emulator {
    insns: Vec<Insn>,
    maps: Vec<EmuMap>,
    mem: Memory,
    /// Possible CPUs, for per-CPU values read from the kernel.
    cpus: usize,
}

/// A call frame to return to.
struct Frame {
    ret: usize,
    saved: [u64; 4],
    r10: u64,
}

impl Emulator {
    /// `object`: `edge_filter::loader::OBJECT`; `program`: the XDP program's name
    /// (`edge_filter`, multi-buffer, or `edge_filter_lin`); `maps`: the loaded filter's
    /// maps, which lookups read through to by name.
    pub fn new(object: &[u8], program: &str, maps: &edge_filter::Maps) -> anyhow::Result<Self> {
        let mut obj = aya_obj::Object::parse(object).context("parse the eBPF object")?;
        // Not applied here: the object must not need them (aya-ebpf emits none).
        ensure!(!obj.has_btf_relocations(), "the object has CO-RE relocations, which the emulator does not apply");
        let defs: Vec<(String, aya_obj::Map)> = {
            let mut v: Vec<_> = obj.maps.iter().map(|(n, m)| (n.clone(), m.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(defs.iter().enumerate().map(|(i, (n, m))| (n.as_str(), FD_BASE + i as i32, m)), &text_sections)
            .context("relocate the maps")?;
        obj.relocate_calls(&text_sections).context("relocate the calls")?;
        let prog = obj.programs.get(program).with_context(|| format!("no program `{program}` in the object"))?;
        let function = obj.functions.get(&prog.function_key()).with_context(|| format!("no function for program `{program}`"))?;
        let insns = function.instructions.iter().map(|i| Insn { code: i.code, dst: i.dst_reg(), src: i.src_reg(), off: i.off, imm: i.imm }).collect();
        let mut emu_maps = Vec::new();
        for (name, def) in &defs {
            let real = match maps.raw_fd(name) {
                Some(fd) => Some(fd.try_clone_to_owned().with_context(|| format!("duplicate the descriptor of map {name}"))?),
                None => None,
            };
            let data = (!def.data().is_empty()).then(|| def.data().to_vec());
            emu_maps.push(EmuMap {
                name: name.clone(),
                map_type: bpf_map_type::try_from(def.map_type())
                    .map_err(|_| anyhow!("map {name} has type {}, which the emulator does not know", def.map_type()))?,
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
                real: if data.is_some() { None } else { real },
                data,
                overlay: HashMap::new(),
            });
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        Self::from_parts(insns, emu_maps, cpus)
    }

    /// An emulator of hand-made bytecode: `ld_imm64` with `src` 1 and imm
    /// `FD_BASE + i` names `maps[i]`.
    pub fn from_parts(insns: Vec<Insn>, maps: Vec<EmuMap>, cpus: usize) -> anyhow::Result<Self> {
        ensure!(maps.len() < 1024, "too many maps");
        let mut emu = Self { insns, maps, mem: Memory::default(), cpus: cpus.max(1) };
        for (i, m) in emu.maps.iter().enumerate() {
            if let Some(data) = &m.data {
                ensure!((data.len() as u64) < DATA_STRIDE, "data map {} is too large", m.name);
                emu.mem.add(DATA_BASE + DATA_STRIDE * i as u64, data.clone(), true, "data map");
            }
        }
        Ok(emu)
    }

    /// The first fake descriptor (map `i` is `fd_base() + i`), for hand-made bytecode.
    pub const fn fd_base() -> i32 {
        FD_BASE
    }

    /// Forget every value looked up, updated or deleted: the next run reads the
    /// kernel's maps afresh. Data maps keep what the program wrote to them.
    pub fn reset(&mut self) {
        for m in &mut self.maps {
            m.overlay.clear();
        }
        self.mem.regions.retain(|base, _| *base < VALUE_BASE);
        self.mem.next_value = VALUE_BASE;
    }

    /// Give the program's clock (`CLOCK`, laid out as `Reading` in
    /// `edge-filter-ebpf/src/clock.rs`) a reading a jiffy old and a measured jiffy, as
    /// every CPU has them a second after the program starts: the next run counts the
    /// steady state, in which reading the time makes no call. Until the next `reset`.
    pub fn steady_clock(&mut self) -> anyhow::Result<()> {
        let m = self.maps.iter().position(|m| m.name == "CLOCK").context("the object has no CLOCK map")?;
        let now = edge_filter::report::monotonic_ns();
        let reading: Vec<u8> = [now / JIFFY_NS - 1, now - JIFFY_NS, JIFFY_NS].iter().flat_map(|v| v.to_le_bytes()).collect();
        ensure!(reading.len() == self.maps[m].value_size as usize, "CLOCK's value is not a reading of three u64");
        let addr = self.mem.alloc(reading)?;
        self.maps[m].overlay.insert(0u32.to_le_bytes().to_vec(), Slot::Value(addr));
        Ok(())
    }

    /// Run the program once on `frame` arriving on `ifindex`.
    pub fn run(&mut self, frame: &[u8], ifindex: u32) -> anyhow::Result<Trace> {
        ensure!((frame.len() as u64) < STACK_BASE - PACKET_BASE, "frame too large");
        let mut ctx = Vec::with_capacity(24);
        let start = PACKET_BASE as u32;
        let end = start + frame.len() as u32;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        for v in [start, end, start, ifindex, 0, 0] {
            ctx.extend(v.to_le_bytes());
        }
        self.mem.add(CTX_BASE, ctx, false, "context");
        self.mem.add(PACKET_BASE, frame.to_vec(), true, "packet");
        let result = self.execute(frame.len() as u64);
        self.mem.regions.remove(&CTX_BASE);
        self.mem.regions.remove(&PACKET_BASE);
        for depth in 0..MAX_FRAMES as u64 {
            self.mem.regions.remove(&(STACK_BASE + STACK_STRIDE * depth));
        }
        result
    }

    fn stack(&mut self, depth: usize) -> u64 {
        let base = STACK_BASE + STACK_STRIDE * depth as u64;
        self.mem.add(base, vec![0; STACK_SIZE as usize], true, "stack");
        base + STACK_SIZE
    }

    fn execute(&mut self, frame_len: u64) -> anyhow::Result<Trace> {
        let mut t = Trace::default();
        let mut r = [0u64; 11];
        r[1] = CTX_BASE;
        r[10] = self.stack(0);
        let mut frames: Vec<Frame> = Vec::new();
        let mut pc = 0usize;
        loop {
            let Some(&i) = self.insns.get(pc) else { bail!("pc {pc}: past the end of the program") };
            t.insns += 1;
            *t.by_pc.entry(pc).or_default() += 1;
            ensure!(t.insns <= MAX_INSNS, "pc {pc}: more than {MAX_INSNS} instructions: a runaway loop");
            let (dst, src) = (i.dst as usize, i.src as usize);
            ensure!(dst <= 10 && src <= 10, "pc {pc}: bad register in {i:?}");
            let mut next = pc + 1;
            let class = i.code & 0x07;
            match class {
                // LD: only ld_imm64.
                0x00 => {
                    ensure!(i.code == 0x18, "pc {pc}: unsupported load {:#04x}", i.code);
                    let hi = self.insns.get(pc + 1).with_context(|| format!("pc {pc}: ld_imm64 without its second half"))?;
                    r[dst] = match i.src {
                        0 => u64::from(i.imm as u32) | (u64::from(hi.imm as u32) << 32),
                        1 => HANDLE_BASE + 16 * self.map_index(i.imm).with_context(|| format!("pc {pc}"))? as u64,
                        2 => {
                            let m = self.map_index(i.imm).with_context(|| format!("pc {pc}"))?;
                            ensure!(self.maps[m].data.is_some(), "pc {pc}: map value of {}, not a data map", self.maps[m].name);
                            DATA_BASE + DATA_STRIDE * m as u64 + u64::from(hi.imm as u32)
                        }
                        s => bail!("pc {pc}: ld_imm64 with src_reg {s}"),
                    };
                    next = pc + 2;
                }
                // LDX
                0x01 => {
                    let size = size_of(i.code);
                    let addr = r[src].wrapping_add(i.off as i64 as u64);
                    let v = self.mem.load(addr, size).with_context(|| format!("pc {pc}: load"))?;
                    r[dst] = match i.code & 0xe0 {
                        0x60 => v,
                        0x80 => sign_extend(v, size * 8),
                        m => bail!("pc {pc}: unsupported load mode {m:#x}"),
                    };
                }
                // ST
                0x02 => {
                    ensure!(i.code & 0xe0 == 0x60, "pc {pc}: unsupported store {:#04x}", i.code);
                    let addr = r[dst].wrapping_add(i.off as i64 as u64);
                    self.mem.store(addr, size_of(i.code), i.imm as i64 as u64).with_context(|| format!("pc {pc}: store"))?;
                }
                // STX
                0x03 => {
                    let size = size_of(i.code);
                    let addr = r[dst].wrapping_add(i.off as i64 as u64);
                    match i.code & 0xe0 {
                        0x60 => self.mem.store(addr, size, r[src]).with_context(|| format!("pc {pc}: store"))?,
                        0xc0 => self.atomic(&mut r, i, addr, size).with_context(|| format!("pc {pc}: atomic"))?,
                        m => bail!("pc {pc}: unsupported store mode {m:#x}"),
                    }
                }
                0x04 | 0x07 => alu(&mut r, i, class == 0x07).with_context(|| format!("pc {pc}"))?,
                0x05 | 0x06 => {
                    let op = i.code & 0xf0;
                    let wide = class == 0x05;
                    match op {
                        0x00 => {
                            // JA; the JMP32 form (gotol) takes its offset in imm.
                            let off = if wide { i64::from(i.off) } else { i64::from(i.imm) };
                            next = jump(pc, off).with_context(|| format!("pc {pc}"))?;
                        }
                        0x80 => {
                            ensure!(wide, "pc {pc}: call in the JMP32 class");
                            match i.src {
                                0 => {
                                    let id = i.imm as u32;
                                    r[0] = self.helper(id, &r, frame_len, &mut t).with_context(|| format!("pc {pc}: helper {id}"))?;
                                }
                                1 => {
                                    ensure!(frames.len() + 1 < MAX_FRAMES, "pc {pc}: calls nested deeper than {MAX_FRAMES}");
                                    t.subprog_calls += 1;
                                    frames.push(Frame { ret: pc + 1, saved: [r[6], r[7], r[8], r[9]], r10: r[10] });
                                    r[10] = self.stack(frames.len());
                                    next = jump(pc, i64::from(i.imm)).with_context(|| format!("pc {pc}"))?;
                                }
                                s => bail!("pc {pc}: call with src_reg {s} (kfuncs are not emulated)"),
                            }
                        }
                        0x90 => {
                            ensure!(wide, "pc {pc}: exit in the JMP32 class");
                            match frames.pop() {
                                None => {
                                    t.action = r[0] as u32;
                                    return Ok(t);
                                }
                                Some(f) => {
                                    [r[6], r[7], r[8], r[9]] = f.saved;
                                    r[10] = f.r10;
                                    next = f.ret;
                                }
                            }
                        }
                        _ => {
                            let b = if i.code & 0x08 != 0 { r[src] } else { i.imm as i64 as u64 };
                            let a = r[dst];
                            if condition(op, a, b, wide).with_context(|| format!("pc {pc}"))? {
                                next = jump(pc, i64::from(i.off)).with_context(|| format!("pc {pc}"))?;
                            }
                        }
                    }
                }
                _ => unreachable!("three bits"),
            }
            pc = next;
        }
    }

    fn map_index(&self, fd: i32) -> anyhow::Result<usize> {
        let i = fd.checked_sub(FD_BASE).and_then(|i| usize::try_from(i).ok()).filter(|i| *i < self.maps.len());
        i.with_context(|| format!("{fd} is no map's descriptor"))
    }

    fn map_of_handle(&self, handle: u64) -> anyhow::Result<usize> {
        let i = handle.checked_sub(HANDLE_BASE).filter(|d| d % 16 == 0).map(|d| (d / 16) as usize);
        i.filter(|i| *i < self.maps.len()).with_context(|| format!("{handle:#x} is not a map"))
    }

    fn atomic(&mut self, r: &mut [u64; 11], i: Insn, addr: u64, size: usize) -> anyhow::Result<()> {
        ensure!(size == 4 || size == 8, "atomics are 32 or 64 bits, not {}", size * 8);
        let mask = if size == 4 { u64::from(u32::MAX) } else { u64::MAX };
        let old = self.mem.load(addr, size)?;
        let src = r[i.src as usize] & mask;
        let op = i.imm as u32;
        let (new, fetch_into) = match op & !0x01 {
            0x00 => (old.wrapping_add(src), 0x01),
            0x40 => (old | src, 0x01),
            0x50 => (old & src, 0x01),
            0xa0 => (old ^ src, 0x01),
            _ => match op {
                0xe1 => (src, 0x01),
                0xf1 => {
                    let new = if r[0] & mask == old { src } else { old };
                    self.mem.store(addr, size, new)?;
                    r[0] = old;
                    return Ok(());
                }
                _ => bail!("atomic operation {op:#x}"),
            },
        };
        self.mem.store(addr, size, new & mask)?;
        if op & fetch_into != 0 {
            r[i.src as usize] = old;
        }
        Ok(())
    }

    fn helper(&mut self, id: u32, r: &[u64; 11], frame_len: u64, t: &mut Trace) -> anyhow::Result<u64> {
        *t.by_helper.entry(id).or_default() += 1;
        let inlined = id == helper::MAP_LOOKUP_ELEM && self.maps[self.map_of_handle(r[1])?].is_array();
        if inlined {
            t.inlined_lookups += 1;
        } else if id != helper::JIFFIES64 {
            // (`bpf_jiffies64` is no call either: the verifier makes it a load.)
            t.helper_calls += 1;
        }
        let neg = |e: i64| (-e) as u64;
        Ok(match id {
            helper::MAP_LOOKUP_ELEM => {
                let m = self.map_of_handle(r[1])?;
                let key = self.mem.slice(r[2], self.maps[m].key_size as usize)?.to_vec();
                self.lookup(m, &key)?.unwrap_or(0)
            }
            helper::MAP_UPDATE_ELEM => {
                let m = self.map_of_handle(r[1])?;
                let key = self.mem.slice(r[2], self.maps[m].key_size as usize)?.to_vec();
                let value = self.mem.slice(r[3], self.maps[m].value_size as usize)?.to_vec();
                match self.update(m, key, value, r[4])? {
                    Ok(()) => 0,
                    Err(e) => neg(e),
                }
            }
            helper::MAP_DELETE_ELEM => {
                let m = self.map_of_handle(r[1])?;
                let key = self.mem.slice(r[2], self.maps[m].key_size as usize)?.to_vec();
                match self.delete(m, key)? {
                    Ok(()) => 0,
                    Err(e) => neg(e),
                }
            }
            helper::KTIME_GET_NS => edge_filter::report::monotonic_ns(),
            // The verifier inlines this helper into a load.
            helper::JIFFIES64 => edge_filter::report::monotonic_ns() / JIFFY_NS,
            helper::XDP_GET_BUFF_LEN => frame_len,
            // The drop log is off in the benchmark: no record is reserved or sent.
            helper::RINGBUF_OUTPUT | helper::RINGBUF_SUBMIT | helper::RINGBUF_DISCARD | helper::RINGBUF_RESERVE => 0,
            _ => bail!("helper {id} is not emulated"),
        })
    }

    /// The address of `key`'s value in map `m`, `None` when it has none.
    fn lookup(&mut self, m: usize, key: &[u8]) -> anyhow::Result<Option<u64>> {
        let map = &self.maps[m];
        if map.is_array() {
            let index = u32::from_le_bytes(key.try_into().context("an array key is 4 bytes")?);
            if index >= map.max_entries {
                return Ok(None);
            }
        } else {
            ensure!(map.is_hash(), "lookup in map {} of type {:?}", map.name, map.map_type);
        }
        match map.overlay.get(key) {
            Some(Slot::Value(addr)) => return Ok(Some(*addr)),
            Some(Slot::Deleted) => return Ok(None),
            None => {}
        }
        let value = match self.kernel_value(m, key)? {
            Some(v) => v,
            // A local array starts zeroed; a hash entry is absent.
            None if map.is_array() => vec![0; map.value_size as usize],
            None => return Ok(None),
        };
        let addr = self.mem.alloc(value)?;
        self.maps[m].overlay.insert(key.to_vec(), Slot::Value(addr));
        Ok(Some(addr))
    }

    /// Whether `key` is in map `m`: the overlay, then the kernel.
    fn exists(&self, m: usize, key: &[u8]) -> anyhow::Result<bool> {
        let map = &self.maps[m];
        Ok(match map.overlay.get(key) {
            Some(Slot::Value(_)) => true,
            Some(Slot::Deleted) => false,
            None if map.is_array() => true,
            None => self.kernel_value(m, key)?.is_some(),
        })
    }

    fn update(&mut self, m: usize, key: Vec<u8>, value: Vec<u8>, flags: u64) -> anyhow::Result<Result<(), i64>> {
        let map = &self.maps[m];
        ensure!(flags <= BPF_EXIST, "update of map {} with flags {flags}", map.name);
        if map.is_array() {
            let index = u32::from_le_bytes(key.as_slice().try_into().context("an array key is 4 bytes")?);
            if index >= map.max_entries {
                return Ok(Err(E2BIG));
            }
            if flags == BPF_NOEXIST {
                return Ok(Err(EEXIST));
            }
        } else {
            ensure!(map.is_hash(), "update of map {} of type {:?}", map.name, map.map_type);
            let exists = self.exists(m, &key)?;
            if exists && flags == BPF_NOEXIST {
                return Ok(Err(EEXIST));
            }
            if !exists && flags == BPF_EXIST {
                return Ok(Err(ENOENT));
            }
        }
        match self.maps[m].overlay.get(&key) {
            Some(Slot::Value(addr)) => {
                let addr = *addr;
                self.mem.slice_mut(addr, value.len())?.copy_from_slice(&value);
            }
            _ => {
                let addr = self.mem.alloc(value)?;
                self.maps[m].overlay.insert(key, Slot::Value(addr));
            }
        }
        Ok(Ok(()))
    }

    fn delete(&mut self, m: usize, key: Vec<u8>) -> anyhow::Result<Result<(), i64>> {
        let map = &self.maps[m];
        if map.is_array() {
            return Ok(Err(EINVAL));
        }
        ensure!(map.is_hash(), "delete in map {} of type {:?}", map.name, map.map_type);
        if !self.exists(m, &key)? {
            return Ok(Err(ENOENT));
        }
        self.maps[m].overlay.insert(key, Slot::Deleted);
        Ok(Ok(()))
    }

    /// `key`'s value in the kernel's map (CPU 0's of a per-CPU map); `None` when the
    /// kernel has no entry or the map is local.
    fn kernel_value(&self, m: usize, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let map = &self.maps[m];
        let Some(fd) = &map.real else { return Ok(None) };
        let size = map.value_size as usize;
        let len = if map.is_per_cpu() { size.next_multiple_of(8) * self.cpus } else { size };
        let mut value = vec![0u8; len];
        ensure!(key.len() == map.key_size as usize, "a key of {} bytes for map {}", key.len(), map.name);
        // union bpf_attr, BPF_MAP_*_ELEM: map_fd, (pad), key, value, flags.
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key.as_ptr() as u64, value: value.as_mut_ptr() as u64, flags: 0 };
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        // SAFETY: the attribute points at a key of the map's key size and a buffer of
        // the map's value size (per CPU, for a per-CPU map), both alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr as *const ElemAttr, std::mem::size_of::<ElemAttr>()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("BPF_MAP_LOOKUP_ELEM on map {}", map.name));
        }
        value.truncate(size);
        Ok(Some(value))
    }
}

/// Bytes of a load or store: BPF_W, BPF_H, BPF_B, BPF_DW.
fn size_of(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

fn sign_extend(v: u64, bits: usize) -> u64 {
    if bits >= 64 {
        return v;
    }
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

fn jump(pc: usize, off: i64) -> anyhow::Result<usize> {
    let to = pc as i64 + 1 + off;
    usize::try_from(to).map_err(|_| anyhow!("a jump to {to}"))
}

fn condition(op: u8, a: u64, b: u64, wide: bool) -> anyhow::Result<bool> {
    let (a, b) = if wide { (a, b) } else { (a & 0xffff_ffff, b & 0xffff_ffff) };
    let (sa, sb) = if wide { (a as i64, b as i64) } else { (i64::from(a as u32 as i32), i64::from(b as u32 as i32)) };
    Ok(match op {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => sa > sb,
        0x70 => sa >= sb,
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => sa < sb,
        0xd0 => sa <= sb,
        _ => bail!("jump operation {op:#x}"),
    })
}

fn alu(r: &mut [u64; 11], i: Insn, wide: bool) -> anyhow::Result<()> {
    let (dst, src) = (i.dst as usize, i.src as usize);
    ensure!(dst != 10, "a write to r10");
    let op = i.code & 0xf0;
    let x = i.code & 0x08 != 0;
    if op == 0xd0 {
        // END: BPF_TO_LE / BPF_TO_BE in ALU, BSWAP in ALU64 (the host is little-endian).
        let v = r[dst];
        let swap = wide || x;
        r[dst] = match (i.imm, swap) {
            (16, false) => v & 0xffff,
            (32, false) => v & 0xffff_ffff,
            (64, false) => v,
            (16, true) => u64::from((v as u16).swap_bytes()),
            (32, true) => u64::from((v as u32).swap_bytes()),
            (64, true) => v.swap_bytes(),
            (n, _) => bail!("byte swap of {n} bits"),
        };
        return Ok(());
    }
    let b = if x { r[src] } else { i.imm as i64 as u64 };
    let a = r[dst];
    let signed = i.off == 1;
    // One operation table for both widths: `$u`/`$s` the unsigned and signed types,
    // `$mov` the sign-extending moves the width has.
    macro_rules! arith {
        ($u:ty, $s:ty, $what:literal, $mov:expr) => {{
            let (a, b) = (a as $u, b as $u);
            let shift = b & (<$u>::BITS - 1) as $u;
            match op {
                0x00 => a.wrapping_add(b),
                0x10 => a.wrapping_sub(b),
                0x20 => a.wrapping_mul(b),
                0x30 if signed => {
                    if b == 0 {
                        0
                    } else {
                        (a as $s).wrapping_div(b as $s) as $u
                    }
                }
                0x30 => a.checked_div(b).unwrap_or(0),
                0x40 => a | b,
                0x50 => a & b,
                0x60 => a << shift,
                0x70 => a >> shift,
                0x80 => (a as $s).wrapping_neg() as $u,
                0x90 if signed => {
                    if b == 0 {
                        a
                    } else {
                        (a as $s).wrapping_rem(b as $s) as $u
                    }
                }
                0x90 => a.checked_rem(b).unwrap_or(a),
                0xa0 => a ^ b,
                0xb0 => $mov(b)?,
                0xc0 => ((a as $s) >> shift) as $u,
                _ => bail!("{} operation {op:#x}", $what),
            }
        }};
    }
    r[dst] = if wide {
        arith!(u64, i64, "ALU64", |b: u64| -> anyhow::Result<u64> {
            match i.off {
                0 => Ok(b),
                8 | 16 | 32 if x => Ok(sign_extend(b, i.off as usize)),
                n => bail!("mov with offset {n}"),
            }
        })
    } else {
        u64::from(arith!(u32, i32, "ALU", |b: u32| -> anyhow::Result<u32> {
            match i.off {
                0 => Ok(b),
                8 | 16 if x => Ok(sign_extend(u64::from(b), i.off as usize) as u32),
                n => bail!("mov32 with offset {n}"),
            }
        }))
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: Insn = Insn::new(0x95, 0, 0, 0, 0);

    fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }

    fn run(insns: Vec<Insn>, maps: Vec<EmuMap>) -> Trace {
        Emulator::from_parts(insns, maps, 1).unwrap().run(&[0u8; 64], 3).unwrap()
    }

    #[test]
    fn alu_in_both_widths() {
        let t = run(
            vec![
                mov64_imm(0, -1),              // r0 = u64::MAX
                Insn::new(0x04, 0, 0, 0, 2),   // w0 += 2: 1, upper half cleared
                mov64_imm(1, 7),               //
                Insn::new(0x2f, 0, 1, 0, 0),   // r0 *= r1: 7
                Insn::new(0x67, 0, 0, 0, 8),   // r0 <<= 8: 0x700
                Insn::new(0x37, 0, 0, 0, 3),   // r0 /= 3: 597
                Insn::new(0x97, 0, 0, 0, 100), // r0 %= 100: 97
                Insn::new(0xdc, 0, 0, 0, 16),  // be16: 0x6100
                Insn::new(0x87, 0, 0, 0, 0),   // r0 = -r0
                Insn::new(0xc7, 0, 0, 0, 4),   // r0 s>>= 4: -0x610
                Insn::new(0x37, 0, 0, 1, -2),  // r0 s/= -2: 0x308
                EXIT,
            ],
            Vec::new(),
        );
        assert_eq!(t.action, 0x308);
        assert_eq!(t.insns, 12);
        // Division by zero is zero; modulo by zero leaves the dividend.
        let t = run(vec![mov64_imm(0, 9), mov64_imm(1, 0), Insn::new(0x9f, 0, 1, 0, 0), EXIT], Vec::new());
        assert_eq!(t.action, 9);
        let t = run(vec![mov64_imm(0, 9), mov64_imm(1, 0), Insn::new(0x3f, 0, 1, 0, 0), EXIT], Vec::new());
        assert_eq!(t.action, 0);
        // movsx: r0 = (s8) 0xff.
        let t = run(vec![mov64_imm(1, 0xff), Insn::new(0xbf, 0, 1, 8, 0), Insn::new(0x77, 0, 0, 0, 32), EXIT], Vec::new());
        assert_eq!(t.action, u32::MAX);
    }

    #[test]
    fn a_loop_of_conditional_jumps() {
        // r0 = 0; r1 = 10; loop: r0 += 3; r1 -= 1; if r1 != 0 goto loop; exit.
        let t = run(
            vec![mov64_imm(0, 0), mov64_imm(1, 10), Insn::new(0x07, 0, 0, 0, 3), Insn::new(0x17, 1, 0, 0, 1), Insn::new(0x55, 1, 0, -3, 0), EXIT],
            Vec::new(),
        );
        assert_eq!(t.action, 30);
        assert_eq!(t.insns, 2 + 3 * 10 + 1);
        // Signed against unsigned, 32-bit: -1 s< 1 but not u< 1.
        let t = run(
            vec![
                mov64_imm(1, -1),
                mov64_imm(0, 1),
                Insn::new(0xa6, 1, 0, 1, 1), // if w1 < 1 goto +1
                Insn::new(0xc6, 1, 0, 1, 1), // if w1 s< 1 goto +1
                EXIT,
                mov64_imm(0, 2),
                EXIT,
            ],
            Vec::new(),
        );
        assert_eq!(t.action, 2);
        assert_eq!(t.insns, 6);
    }

    #[test]
    fn a_runaway_loop_is_an_error() {
        let mut e = Emulator::from_parts(vec![Insn::new(0x05, 0, 0, -1, 0), EXIT], Vec::new(), 1).unwrap();
        assert!(format!("{:#}", e.run(&[0; 14], 1).unwrap_err()).contains("runaway"));
    }

    #[test]
    fn a_bpf_to_bpf_call_has_its_own_stack_and_keeps_the_callee_saved() {
        let t = run(
            vec![
                mov64_imm(6, 5),
                Insn::new(0x7a, 10, 0, -8, 11), // *(u64 *)(r10 - 8) = 11
                Insn::new(0x85, 0, 1, 0, 4),    // call +4
                Insn::new(0x79, 1, 10, -8, 0),  // r1 = *(u64 *)(r10 - 8): still 11
                Insn::new(0x0f, 0, 1, 0, 0),    // r0 += r1
                Insn::new(0x0f, 0, 6, 0, 0),    // r0 += r6: still 5
                EXIT,
                mov64_imm(6, 100), // callee: clobbers r6 and its own stack
                Insn::new(0x7a, 10, 0, -8, 99),
                mov64_imm(0, 1000),
                EXIT,
            ],
            Vec::new(),
        );
        assert_eq!(t.action, 1016);
        assert_eq!(t.subprog_calls, 1);
        assert_eq!(t.insns, 11);
        assert_eq!(t.helper_calls, 0);
    }

    #[test]
    fn atomics_and_the_context() {
        let t = run(
            vec![
                Insn::new(0x61, 2, 1, 12, 0),   // r2 = ctx->ingress_ifindex (3)
                Insn::new(0x7a, 10, 0, -8, 40), // *(u64 *)(r10 - 8) = 40
                Insn::new(0xdb, 10, 2, -8, 0),  // lock *(u64 *)(r10 - 8) += r2: 43
                mov64_imm(3, 1),
                Insn::new(0xc3, 10, 3, -8, 0x01), // w3 = atomic_fetch_add((u32 *)(r10 - 8), w3): 43, mem 44
                mov64_imm(0, 44),
                mov64_imm(4, 7),
                Insn::new(0xdb, 10, 4, -8, 0xf1), // cmpxchg: mem 44 == r0, so mem = 7; r0 = 44
                Insn::new(0x79, 5, 10, -8, 0),    // r5 = 7
                Insn::new(0x27, 3, 0, 0, 1000),   // r3 *= 1000: 43000
                Insn::new(0x0f, 0, 3, 0, 0),      // r0 = 44 + 43000
                Insn::new(0x0f, 0, 5, 0, 0),      // + 7
                EXIT,
            ],
            Vec::new(),
        );
        assert_eq!(t.action, 44 + 43_000 + 7);
    }

    #[test]
    fn out_of_bounds_access_names_the_pc() {
        let mut e = Emulator::from_parts(vec![Insn::new(0x79, 0, 10, 0, 0), EXIT], Vec::new(), 1).unwrap();
        let err = format!("{:#}", e.run(&[0; 14], 1).unwrap_err());
        assert!(err.contains("pc 0"), "{err}");
        // The context is read-only.
        let mut e = Emulator::from_parts(vec![Insn::new(0x62, 1, 0, 0, 0), EXIT], Vec::new(), 1).unwrap();
        assert!(e.run(&[0; 14], 1).is_err());
    }

    /// A jump to the `fail` label, patched once the program is complete.
    const FAIL: i16 = i16::MAX;

    #[test]
    fn ld_imm64_and_local_maps() {
        let fd = Emulator::fd_base();
        let maps = vec![EmuMap::local("A", BPF_MAP_TYPE_ARRAY, 4, 8, 2), EmuMap::local("H", BPF_MAP_TYPE_HASH, 4, 8, 16)];
        let lookup = |map: i32| {
            [
                Insn::new(0x18, 1, 1, 0, fd + map), // r1 = map
                Insn::new(0x00, 0, 0, 0, 0),
                Insn::new(0xbf, 2, 10, 0, 0), // r2 = r10 - 4
                Insn::new(0x07, 2, 0, 0, -4),
                Insn::new(0x85, 0, 0, 0, 1), // map_lookup_elem
            ]
        };
        let mut p = vec![
            Insn::new(0x18, 0, 0, 0, 0x89ab_cdefu32 as i32), // r0 = 0x0123456789abcdef
            Insn::new(0x00, 0, 0, 0, 0x0123_4567),
            Insn::new(0x7b, 10, 0, -16, 0), // *(u64 *)(r10 - 16) = r0
            Insn::new(0x62, 10, 0, -4, 1),  // key = 1
        ];
        p.extend(lookup(0)); // array[1]: zeroed
        p.push(Insn::new(0x15, 0, 0, FAIL, 0)); // if r0 == 0 goto fail
        p.push(Insn::new(0x7a, 0, 0, 0, 5)); // *value = 5
        // hash[1] = *(r10 - 16), then look it up.
        p.extend([
            Insn::new(0x18, 1, 1, 0, fd + 1),
            Insn::new(0x00, 0, 0, 0, 0),
            Insn::new(0xbf, 2, 10, 0, 0),
            Insn::new(0x07, 2, 0, 0, -4),
            Insn::new(0xbf, 3, 10, 0, 0),
            Insn::new(0x07, 3, 0, 0, -16),
            mov64_imm(4, BPF_NOEXIST as i32),
            Insn::new(0x85, 0, 0, 0, 2), // map_update_elem
        ]);
        p.push(Insn::new(0x55, 0, 0, FAIL, 0)); // if r0 != 0 goto fail
        p.extend(lookup(1));
        p.push(Insn::new(0x15, 0, 0, FAIL, 0));
        p.push(Insn::new(0x79, 6, 0, 0, 0)); // r6 = hash[1]
        p.extend(lookup(0));
        p.push(Insn::new(0x79, 0, 0, 0, 0)); // r0 = array[1]: still 5
        p.push(Insn::new(0x0f, 0, 6, 0, 0));
        p.push(EXIT);
        // fail: r0 = 0.
        let fail = p.len();
        p.extend([mov64_imm(0, 0), EXIT]);
        for (pc, i) in p.iter_mut().enumerate() {
            if i.off == FAIL {
                i.off = (fail - pc - 1) as i16;
            }
        }
        let mut e = Emulator::from_parts(p, maps, 1).unwrap();
        let t = e.run(&[0; 14], 1).unwrap();
        assert_eq!(t.action, 0x89ab_cdef_u32 + 5);
        assert_eq!((t.inlined_lookups, t.helper_calls), (2, 2));
        assert_eq!(t.by_helper, BTreeMap::from([(1, 3), (2, 1)]));
        // The overlay persists: a second NOEXIST update fails.
        let t = e.run(&[0; 14], 1).unwrap();
        assert_eq!(t.action, 0);
        e.reset();
        assert_eq!(e.run(&[0; 14], 1).unwrap().action, 0x89ab_cdef_u32 + 5);
    }
}
