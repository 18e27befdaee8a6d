//! The XDP side of the AF_XDP port, straight on the bpf(2) syscall: no clang, libbpf or object
//! files at build or run time.
//!
//! Two maps and one hand-assembled program:
//! - `XSKMAP` (queue index -> AF_XDP socket), the redirect target;
//! - a hash of owned addresses (16-byte keys: IPv6 as is, IPv4 as `::ffff:a.b.c.d`).
//!
//! The program redirects a frame to the socket of its receive queue only if it is addressed to an
//! owned address (IPv4/IPv6 destination, ARP target, or ICMPv6 neighbour-solicitation target) and
//! returns `XDP_PASS` for everything else, so the host's stack keeps its own traffic (SSH, ARP for
//! its addresses, routing protocols) while the balancer runs. `bpf_redirect_map` gets `XDP_PASS` as
//! its fallback too: a queue without a bound socket passes frames to the kernel instead of
//! dropping them. Frames with a VLAN tag and IPv6 packets with extension headers before the
//! ICMPv6 header are passed (not redirected): the pipeline would accept a single tag, the program
//! does not look behind one.
//!
//! The program is attached with `BPF_LINK_CREATE`, so it is detached when the link's fd is
//! closed, also when the process dies.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// bpf(2) commands.
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// Attach type for XDP links (`enum bpf_attach_type`).
const BPF_XDP: u32 = 37;

/// `XDP_FLAGS_SKB_MODE`: generic XDP, runs on socket buffers after the driver.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, runs in the driver before an skb exists.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// XDP action: hand the frame to the host's stack.
const XDP_PASS: i32 = 2;
/// `bpf_map_lookup_elem` helper id.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_redirect_map` helper id.
const HELPER_REDIRECT_MAP: i32 = 51;

/// How often a busy attach is retried (the link of a process that just exited may still be
/// tearing down) and how long to wait between tries.
const EBUSY_RETRIES: u32 = 20;
const EBUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native first, generic if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only: works on every device, slower, copy mode only.
    Generic,
}

/// One raw eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that the kernel replaces by the map with that fd.
const PSEUDO_MAP_FD: u8 = 1;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// Jump targets of the filter program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Ipv4,
    Ipv6,
    V4Key,
    V6Dst,
    Lookup,
    V6Src,
    SrcLookup,
    Redirect,
    Pass,
}

/// A tiny assembler: emits instructions, resolves jumps to labels at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    fixups: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        });
        self
    }
    fn mov_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.raw(ALU64 | MOV | X, dst, src, 0, 0)
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.raw(ALU64 | MOV | K, dst, 0, 0, imm)
    }
    fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.raw(ALU64 | ADD | K, dst, 0, 0, imm)
    }
    fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) -> &mut Self {
        self.raw(LDX | MEM | size, dst, src, off, 0)
    }
    fn store_reg(&mut self, size: u8, dst: u8, off: i16, src: u8) -> &mut Self {
        self.raw(STX | MEM | size, dst, src, off, 0)
    }
    fn store_imm(&mut self, size: u8, dst: u8, off: i16, imm: i32) -> &mut Self {
        self.raw(ST | MEM | size, dst, 0, off, imm)
    }
    /// `dst = map` (two instruction slots; the kernel swaps the fd for the map pointer).
    fn load_map(&mut self, dst: u8, map: RawFd) -> &mut Self {
        self.raw(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, map)
            .raw(0, 0, 0, 0, 0)
    }
    fn jump_imm(&mut self, op: u8, dst: u8, imm: i32, to: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | op | K, dst, 0, 0, imm)
    }
    fn jump_reg(&mut self, op: u8, dst: u8, src: u8, to: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | op | X, dst, src, 0, 0)
    }
    fn goto(&mut self, to: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | JA, 0, 0, 0, 0)
    }
    fn call(&mut self, helper: i32) -> &mut Self {
        self.raw(JMP | CALL, 0, 0, 0, helper)
    }
    fn exit(&mut self) -> &mut Self {
        self.raw(JMP | EXIT, 0, 0, 0, 0)
    }
    /// Jumps to `short` unless the frame (data in r2, data_end in r3) holds `len` bytes; uses r4.
    fn need(&mut self, len: i32, short: Label) -> &mut Self {
        self.mov_reg(R4, R2) // r4 = data
            .add_imm(R4, len) // r4 = data + len
            .jump_reg(JGT, R4, R3, short) // past data_end: too short
    }
    /// The map key at r10-16: the IPv4 address in `reg` as `::ffff:a.b.c.d`.
    fn key_v4(&mut self, reg: u8) -> &mut Self {
        self.store_imm(DW, R10, -16, 0) // key[0..8] = 0
            .store_imm(W, R10, -8, 0xffff_0000_u32 as i32) // key[8..12] = 00 00 ff ff
            .store_reg(W, R10, -4, reg) // key[12..16] = address
    }
    /// The map key at r10-16: the 16 frame bytes at `off` (an IPv6 address); uses r5.
    fn key_v6(&mut self, off: i16) -> &mut Self {
        self.load(DW, R5, R2, off) // r5 = address[0..8]
            .store_reg(DW, R10, -16, R5) // key[0..8]
            .load(DW, R5, R2, off + 8) // r5 = address[8..16]
            .store_reg(DW, R10, -8, R5) // key[8..16]
    }
    /// `r0 = bpf_map_lookup_elem(map, key at r10-16)`.
    fn lookup_key(&mut self, map: RawFd) -> &mut Self {
        self.load_map(R1, map) // r1 = &map (ld_imm64 pseudo map fd)
            .mov_reg(R2, R10) // r2 = frame pointer
            .add_imm(R2, -16) // r2 = &key
            .call(HELPER_MAP_LOOKUP_ELEM) // r0 = bpf_map_lookup_elem(r1, r2)
    }
    fn label(&mut self, l: Label) -> &mut Self {
        self.labels.push((l, self.insns.len()));
        self
    }
    /// The program with jump offsets filled in (relative to the instruction after the jump).
    fn finish(mut self) -> Vec<Insn> {
        for &(at, to) in &self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|&(_, pos)| pos)
                .expect("every label used by the program is placed");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// The redirect-all program: `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)`.
fn program_redirect_all(xsks: RawFd) -> Vec<Insn> {
    let mut a = Asm::default();
    a.load(W, R2, R1, 16) // r2 = ctx->rx_queue_index (struct xdp_md offset 16)
        .load_map(R1, xsks) // r1 = &xsks (ld_imm64 pseudo map fd)
        .mov_imm(R3, XDP_PASS) // r3 = XDP_PASS: the action when no socket sits on this queue
        .call(HELPER_REDIRECT_MAP) // r0 = bpf_redirect_map(r1, r2, r3)
        .exit(); // return r0
    a.finish()
}

/// The filter program: redirect frames for owned addresses, pass the rest (see the module docs).
///
/// Key on the stack at r10-16: 16 bytes, IPv4 as `::ffff:a.b.c.d`. Offsets are from the start of
/// the Ethernet header (14 bytes, untagged).
fn program_owned(xsks: RawFd, owned: RawFd) -> Vec<Insn> {
    use Label::*;
    let mut a = Asm::default();
    a.mov_reg(R6, R1) // r6 = ctx, kept across helper calls
        .mov_imm(R7, 0) // r7 = IP version whose source may be looked up (0: none), kept too
        .load(W, R2, R6, 0) // r2 = ctx->data
        .load(W, R3, R6, 4) // r3 = ctx->data_end
        .need(14, Pass) // runt (no Ethernet header): not ours
        .load(H, R5, R2, 12) // r5 = EtherType (network order, read little-endian)
        .jump_imm(JEQ, R5, 0x0008, Ipv4) // 0x0800 IPv4
        .jump_imm(JEQ, R5, 0xdd86, Ipv6) // 0x86dd IPv6
        .jump_imm(JNE, R5, 0x0608, Pass) // not 0x0806 ARP: pass
        // ARP (Ethernet/IPv4): target protocol address at 14 + 24.
        .need(42, Pass) // short ARP body: pass
        .load(W, R5, R2, 38) // r5 = ARP target IPv4 address
        .goto(V4Key) // build the mapped key
        .label(Ipv4)
        .need(34, Pass) // short IPv4 (Ethernet + minimal header): pass
        .load(W, R5, R2, 30) // r5 = IPv4 destination
        .mov_imm(R7, 4) // an IPv4 packet: its source is looked up on a miss
        .label(V4Key)
        .key_v4(R5)
        .goto(Lookup)
        .label(Ipv6)
        .need(54, Pass) // short IPv6 (Ethernet + header): pass
        .load(B, R5, R2, 20) // r5 = next header
        .jump_imm(JNE, R5, 58, V6Dst) // not ICMPv6: key is the destination
        .need(78, V6Dst) // too short for a solicitation (+ ICMPv6 8 + target 16): destination
        .load(B, R5, R2, 54) // r5 = ICMPv6 type
        .jump_imm(JNE, R5, 135, V6Dst) // not a neighbour solicitation: destination
        .key_v6(62) // key = the solicitation's target
        .goto(Lookup)
        .label(V6Dst)
        .mov_imm(R7, 6) // an IPv6 packet: its source is looked up on a miss
        .key_v6(38) // key = the IPv6 destination
        .label(Lookup)
        .lookup_key(owned)
        .jump_imm(JNE, R0, 0, Redirect) // owned destination: ours
        // Not for us by destination: a nat backend's reply (B -> client) is still ours. Look the
        // source up; only entries marked SOURCE (value 2) redirect by source.
        .jump_imm(JEQ, R7, 0, Pass) // ARP or a solicitation: pass
        .load(W, R2, R6, 0) // r2 = ctx->data (the helper call clobbered r2-r5)
        .load(W, R3, R6, 4) // r3 = ctx->data_end
        .jump_imm(JEQ, R7, 6, V6Src)
        .need(34, Pass) // packet pointers are fresh: bounds again
        .load(W, R5, R2, 26) // r5 = IPv4 source
        .key_v4(R5)
        .goto(SrcLookup)
        .label(V6Src)
        .need(54, Pass) // packet pointers are fresh: bounds again
        .key_v6(22) // key = the IPv6 source
        .label(SrcLookup)
        .lookup_key(owned)
        .jump_imm(JEQ, R0, 0, Pass) // unknown source: pass
        .load(W, R5, R0, 0) // r5 = the entry's kind
        .jump_imm(JNE, R5, KIND_SOURCE as i32, Pass) // an owned address as source: pass
        .label(Redirect)
        .load(W, R2, R6, 16) // r2 = ctx->rx_queue_index
        .load_map(R1, xsks) // r1 = &xsks (ld_imm64 pseudo map fd)
        .mov_imm(R3, XDP_PASS) // r3 = XDP_PASS: the action when no socket sits on this queue
        .call(HELPER_REDIRECT_MAP) // r0 = bpf_redirect_map(r1, r2, r3)
        .exit() // return r0
        .label(Pass)
        .mov_imm(R0, XDP_PASS) // r0 = XDP_PASS
        .exit(); // return r0
    a.finish()
}

/// Map value of an address we own (frames to it are redirected).
const KIND_OWNED: u32 = 1;
/// Map value of a nat backend (frames from it are redirected: they are replies of our flows).
const KIND_SOURCE: u32 = 2;

/// The 16-byte key of an owned address: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
pub fn owned_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Calls bpf(2) with `attr`, returning the non-negative result.
fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`; the kernel reads at most `size_of::<T>()` bytes and treats the rest as zero. Pointers
    // inside it (insns, license, log, key, value) point to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps an fd returned by the kernel.
fn own_fd(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A BPF map, closed on drop.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl Map {
    fn create(map_type: u32, key: usize, value: usize, max: u32, name: &str) -> io::Result<Map> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size: key as u32,
            value_size: value as u32,
            max_entries: max,
            ..Default::default()
        };
        let n = name.len().min(15);
        attr.map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)
            .map_err(|e| with_context(e, format!("creating BPF map {name}")))?;
        Ok(Map {
            fd: own_fd(fd)?,
            key_size: key,
            value_size: value,
        })
    }

    /// Sets `key` to `value`.
    fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() != self.key_size || value.len() != self.value_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BPF map key or value of the wrong size",
            ));
        }
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Removes `key`; absent keys are not an error.
    fn delete(&self, key: &[u8]) -> io::Result<()> {
        if key.len() != self.key_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BPF map key of the wrong size",
            ));
        }
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.map(drop),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an XDP program; on refusal the error carries the verifier's log.
fn load_xdp(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"lb_xsk");
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => own_fd(fd),
        Err(first) => {
            // Load again with a log buffer only now: a log on the happy path costs time and can
            // itself fail (ENOSPC) on kernels that log more.
            let mut log = vec![0u8; 1 << 16];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = sys_bpf(BPF_PROG_LOAD, &mut attr);
            if let Ok(fd) = again {
                return own_fd(fd);
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                first.kind(),
                format!("the kernel refused the XDP program: {first}; verifier log:\n{text}"),
            ))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to `ifindex` through a BPF link, retrying while the device is busy.
fn link_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    let mut tries = 0;
    loop {
        match sys_bpf(BPF_LINK_CREATE, &mut attr) {
            Ok(fd) => return own_fd(fd),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < EBUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(EBUSY_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The loaded maps and program, attached to one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    /// Closing it detaches the program. Declared first so it goes first on drop.
    _link: OwnedFd,
    _prog: OwnedFd,
    xsks: Map,
    owned: Option<Map>,
    owned_now: std::sync::Mutex<Vec<[u8; 16]>>,
    native: bool,
    ifname: String,
}

impl XdpAttachment {
    /// Loads the program for `queues` queues and attaches it to `ifname` (in the calling
    /// thread's network namespace). `max_owned == 0` redirects every frame instead of filtering
    /// on owned addresses.
    pub fn attach(
        ifname: &str,
        queues: u32,
        max_owned: u32,
        mode: AttachMode,
    ) -> io::Result<XdpAttachment> {
        let ifindex = ifindex(ifname)?;
        let xsks = Map::create(BPF_MAP_TYPE_XSKMAP, 4, 4, queues.max(1), "lb_xsks")?;
        let owned = if max_owned > 0 {
            Some(Map::create(
                BPF_MAP_TYPE_HASH,
                16,
                4,
                max_owned,
                "lb_owned",
            )?)
        } else {
            None
        };
        let insns = match &owned {
            Some(o) => program_owned(xsks.fd.as_raw_fd(), o.fd.as_raw_fd()),
            None => program_redirect_all(xsks.fd.as_raw_fd()),
        };
        let prog = load_xdp(&insns).map_err(|e| with_context(e, format!("af_xdp:{ifname}")))?;
        let (link, native) = match mode {
            AttachMode::Native => (link_xdp(&prog, ifindex, XDP_FLAGS_DRV_MODE), true),
            AttachMode::Generic => (link_xdp(&prog, ifindex, XDP_FLAGS_SKB_MODE), false),
            AttachMode::Auto => match link_xdp(&prog, ifindex, XDP_FLAGS_DRV_MODE) {
                Ok(l) => (Ok(l), true),
                Err(_) => (link_xdp(&prog, ifindex, XDP_FLAGS_SKB_MODE), false),
            },
        };
        let link = link.map_err(|e| {
            with_context(
                e,
                format!("attaching XDP to {ifname} ({mode:?} mode; EBUSY: another XDP program is attached)"),
            )
        })?;
        Ok(XdpAttachment {
            _link: link,
            _prog: prog,
            xsks,
            owned,
            owned_now: std::sync::Mutex::new(Vec::new()),
            native,
            ifname: ifname.to_owned(),
        })
    }

    /// True when the program runs in the driver (native XDP), false for generic mode.
    pub fn native(&self) -> bool {
        self.native
    }

    /// Points queue `queue` at the AF_XDP socket `fd`.
    pub fn set_socket(&self, queue: u32, fd: RawFd) -> io::Result<()> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes())
            .map_err(|e| {
                with_context(
                    e,
                    format!("adding queue {queue} of {} to the XSKMAP", self.ifname),
                )
            })
    }

    /// Replaces the set of owned addresses (those whose frames go to userspace). A no-op when
    /// the program redirects everything.
    pub fn set_owned(&self, addrs: &[IpAddr]) -> io::Result<()> {
        self.set_owned_and_sources(addrs, &[])
    }

    /// Replaces the owned addresses (frames to them are redirected) and the nat backends
    /// (frames from them are redirected: their replies to clients pass through us). An address
    /// in both sets counts as owned.
    pub fn set_owned_and_sources(&self, addrs: &[IpAddr], sources: &[IpAddr]) -> io::Result<()> {
        let Some(map) = &self.owned else {
            return Ok(());
        };
        let mut now = self.owned_now.lock().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<(IpAddr, u32)> = sources
            .iter()
            .filter(|a| !addrs.contains(a))
            .map(|&a| (a, KIND_SOURCE))
            .chain(addrs.iter().map(|&a| (a, KIND_OWNED)))
            .collect();
        let want: Vec<[u8; 16]> = entries.iter().map(|&(a, _)| owned_key(a)).collect();
        // Add before removing so an address in both sets is never briefly passed to the kernel.
        for (key, (addr, kind)) in want.iter().zip(&entries) {
            map.update(key, &kind.to_ne_bytes())
                .map_err(|e| with_context(e, format!("adding owned address {addr}")))?;
        }
        for old in now.iter().filter(|k| !want.contains(k)) {
            map.delete(old)?;
        }
        *now = want;
        Ok(())
    }
}

/// The interface index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            format!("interface {ifname}"),
        ));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ipv4_keys_are_mapped_like_the_program_builds_them() {
        let k = owned_key(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)));
        assert_eq!(
            k,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 100]
        );
        // The program stores 0xffff0000 as a little-endian u32 at key[8..12].
        assert_eq!(0xffff_0000_u32.to_le_bytes(), [0, 0, 0xff, 0xff]);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(owned_key(IpAddr::V6(v6)), v6.octets());
    }

    #[test]
    fn jumps_land_on_their_labels() {
        let p = program_owned(3, 4);
        // Every jump target is inside the program and the last two instructions are `pass`.
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if class == JMP && op != CALL && op != EXIT {
                let to = i as i64 + 1 + i64::from(insn.off);
                assert!((0..p.len() as i64).contains(&to), "jump {i} to {to}");
            }
        }
        let n = p.len();
        assert_eq!(
            p[n - 2],
            Insn {
                code: ALU64 | MOV | K,
                regs: R0,
                off: 0,
                imm: XDP_PASS
            }
        );
        assert_eq!(p[n - 1].code, JMP | EXIT);
        // The runt check (instruction 6, after saving ctx and clearing r7) jumps to `pass`.
        assert_eq!(6 + 1 + i64::from(p[6].off), n as i64 - 2);
        assert_eq!(program_redirect_all(3).len(), 6);
    }
}
