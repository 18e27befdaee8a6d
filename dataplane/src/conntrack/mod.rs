//! Per-worker connection tracking table.
//!
//! One [`Conntrack`] per worker: a fixed number of key slots allocated once in [`Conntrack::new`], no
//! allocation afterwards, no locks. Layout and policy:
//!
//! - Open addressing with bounded probing: a key's hash picks two buckets of [`BUCKET`] consecutive slots
//!   ("two choices"); a key lives in one of them and a lookup scans only those 32 slots. Two choices keep
//!   the table usable far past the fill where a single bucket overflows (a single 16-slot bucket
//!   overflows somewhere around 30 % fill at 1M slots): an insert takes its key's first bucket
//!   while that has room to spare (so the fast path finds most keys there) and the emptier
//!   bucket once it fills.
//! - A compact `u16` tag per slot (15-bit fingerprint plus an "unconfirmed" bit) is scanned first, so a miss
//!   touches two short runs of the tag array and almost never a key.
//! - Slots never move: a flow's two keys (original and reply) point at each other by slot index, so a
//!   removed key just frees its slot (no tombstone is needed because lookups always scan whole buckets).
//! - The flow's state, timer and flags live with its original key (the "flow slot").
//! - Expiry is lazy (an expired entry is a miss and may be reused by an insert) plus incremental
//!   ([`Conntrack::expire`] walks a bounded number of slots from a moving cursor).
//! - Flood protection: every flow starts *unconfirmed* and is confirmed by the client's packet that
//!   follows an answer. TCP: the ACK after the backend's SYN+ACK (a flow without a reply key, dsr or
//!   dr, whose answers bypass us: the client's ACK after its SYN; a flow picked up mid-stream: its
//!   second packet). UDP, the same way: the client's datagram after the backend's reply (dsr, dr:
//!   the client's second datagram). A reply alone does not confirm a UDP flow: an echo or DNS
//!   backend answers every spoofed source, so a random-source flood would be "replied".
//!   Unconfirmed flows come in two classes, TCP (*embryonic*) and UDP, each with its own count
//!   held to [`Config::embryonic_budget`] and its own short timeout. An insert may evict only an
//!   unconfirmed flow of its own class, the one with the earliest deadline in its key's buckets,
//!   never a confirmed flow: a UDP flood cannot take TCP's budget or evict a half-open TCP flow,
//!   and a SYN flood cannot evict UDP flows. Within a class, oldest-first eviction keeps a flood
//!   on one service from starving the others: each new flow of another service evicts a flood
//!   flow in its own buckets, and lives until the flood has cycled through the budget (budget /
//!   flood rate), long enough for its answer and confirming packet.
// Denied, not forbidden: `group` matches a bucket's tags with SSE2, and `mem` asks for huge
// pages (their unsafe blocks).
#![deny(unsafe_code)]

mod group;
mod mem;

use crate::flow::FlowKey;

/// Slots per bucket: a key may live in one of two buckets of this many consecutive slots.
pub const BUCKET: usize = 16;

/// Largest supported capacity (slot indices are `u32`, and `u32::MAX` marks "no slot").
pub const MAX_CAPACITY: usize = 1 << 31;

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// Idle timeouts per state, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP flow that has not completed its handshake (SYN seen).
    pub tcp_syn: Millis,
    /// TCP flow with a completed handshake.
    pub tcp_established: Millis,
    /// TCP flow after a FIN or RST.
    pub tcp_closing: Millis,
    /// Confirmed UDP flow (and ICMP echo).
    pub udp: Millis,
    /// UDP flow not yet confirmed (see the module doc): short, so a flood's flows go soon.
    pub udp_unconfirmed: Millis,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 5_000,
            tcp_established: 900_000,
            tcp_closing: 10_000,
            udp: 30_000,
            udp_unconfirmed: 5_000,
        }
    }
}

/// Sizing and timeouts of one worker's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Slots (keys), rounded up to a power of two. A nat/fullnat flow takes two keys.
    pub capacity: usize,
    /// Most unconfirmed flows of each class at once: TCP flows whose handshake is not complete
    /// (embryonic), and separately UDP flows not yet confirmed.
    pub embryonic_budget: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

/// TCP connection state as far as a middlebox can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen from the client.
    SynSent,
    /// SYN+ACK seen from the backend.
    SynReceived,
    /// Handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, or a RST was seen.
    Closed,
}

/// State of a tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// A TCP flow.
    Tcp(TcpState),
    /// A UDP (or ICMP echo) flow; `replied` once the reply direction was seen.
    Udp {
        /// Reply direction seen.
        replied: bool,
    },
}

/// Which key of a flow a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Dir {
    /// Client -> VIP direction (the key the flow was created with).
    Original,
    /// Backend -> balancer direction (nat and fullnat).
    Reply,
}

/// A lookup hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Slot of the key that matched (its value is the rewrite for this direction).
    pub slot: u32,
    /// Slot of the flow's original key (holds the state).
    pub flow: u32,
    /// Direction of the key that matched.
    pub dir: Dir,
}

/// Why [`Conntrack::lookup_steady`] handed back no value: the hit the general path takes
/// instead, or whether any slot holds the key at all (a new flow's insert need not search for a
/// key the lookup found absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The key is tracked, but the packet needs the general path: this lookup's hit.
    Tracked(Hit),
    /// No live flow holds the key: it may sit in a slot whose flow expired, which an insert of
    /// the key must find and remove (what a lookup that does not tell the two apart says).
    Untracked,
    /// No slot holds the key, live or expired (valid until the table next changes).
    Absent,
}

impl Miss {
    /// The hit, if the key is tracked.
    #[inline(always)]
    pub fn hit(self) -> Option<Hit> {
        match self {
            Miss::Tracked(h) => Some(h),
            Miss::Untracked | Miss::Absent => None,
        }
    }
}

/// Why an insert failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// No free, expired or evictable slot in the key's probe window.
    #[error("conntrack full")]
    Full,
    /// The embryonic budget is used up and no embryonic flow could be evicted.
    #[error("embryonic budget exhausted")]
    EmbryonicBudget,
    /// The budget of unconfirmed UDP flows is used up and none could be evicted.
    #[error("unconfirmed UDP budget exhausted")]
    UdpBudget,
    /// A live entry already holds one of the keys.
    #[error("key already tracked")]
    Exists,
}

/// "No slot": the original key of a flow without a reply key (DSR, DR) has this as its peer.
const NO_SLOT: u32 = u32::MAX;

/// A [`Conntrack::lookup_steady`] hint that names no slot: the lookup searches the buckets.
pub const NO_HINT: u32 = u32::MAX;

/// A hint from [`Conntrack::prefetch_slot`] that names no slot because no tag of the key's
/// first bucket carries its fingerprint: [`Conntrack::lookup_steady_fresh`] then searches only
/// the second (any other lookup takes it as [`NO_HINT`]).
pub const NOT_IN_FIRST: u32 = u32::MAX - 1;
const _: () = assert!(MAX_CAPACITY <= NOT_IN_FIRST as usize);

/// Tag of a free slot. Live tags have a fingerprint of at least [`TAG_MIN`].
const TAG_FREE: u16 = 0;
/// Smallest live fingerprint (0 is free; 1 is kept unused so a fingerprint is never mistaken for free).
const TAG_MIN: u16 = 2;
/// Tag bit set on both keys of an unconfirmed flow (TCP or UDP), so eviction candidates are found
/// from the tags alone.
const TAG_UNCONFIRMED: u16 = 0x8000;
/// Fingerprint bits of a tag.
const TAG_FP: u16 = 0x7fff;

/// Slot flag: this key is a flow's reply key (its `peer` is the flow slot).
const F_REPLY: u8 = 1;
/// Slot flag (flow slot): the flow is confirmed, i.e. not embryonic.
const F_CONFIRMED: u8 = 2;
/// Slot flag (flow slot): a FIN was seen in the original direction.
const F_FIN_ORIG: u8 = 4;
/// Slot flag (flow slot): a FIN was seen in the reply direction.
const F_FIN_REPLY: u8 = 8;
/// Slot flag (flow slot): the flow's original key lives in its second bucket (counted in its
/// first bucket's `Conntrack::overflow` until the flow is removed).
const F_SECOND: u8 = 16;
/// Slot flag (flow slot): the flow's reply key lives in its second bucket (counted the same).
const F_PEER_SECOND: u8 = 32;

/// Seed used by [`Conntrack::new`] when none is given; fixed so that runs (and fixtures) are reproducible.
pub const DEFAULT_SEED: u64 = 0x6c62_2d63_6f6e_6e74;

/// A flow key as one 128-bit word, what a slot compares first: an IPv4 key's address and port
/// words (as [`crate::wire::V4Flow`] loads them) and its protocol, so comparing two IPv4 keys
/// is two 64-bit compares. Any other key's word is a marker with its protocol, and equal words
/// then need the full keys compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyWord(u128);

/// Family marks in a [`KeyWord`]'s protocol word (never 0, so a blank slot matches nothing).
const KW_V4: u32 = 0x400;
const KW_OTHER: u32 = 0x600;

impl KeyWord {
    #[inline(always)]
    fn v4(src: u32, dst: u32, ports: u32, proto: u8) -> KeyWord {
        let lo = u64::from(src) | (u64::from(dst) << 32);
        let hi = u64::from(ports) | (u64::from(u32::from(proto) | KW_V4) << 32);
        KeyWord(u128::from(lo) | (u128::from(hi) << 64))
    }

    /// The IPv4 key this word holds whole (its family mark is [`KW_V4`]), else `None`: what
    /// a slot of an IPv4 key reads its key from ([`Slot::flow_key`]).
    #[inline]
    fn v4_key(self) -> Option<FlowKey> {
        let w = self.0;
        if (w >> 96) as u32 & !0xff != KW_V4 {
            return None;
        }
        let addr = |x: u32| crate::flow::Addr::v4(x.to_ne_bytes());
        let p = ((w >> 64) as u32).to_ne_bytes();
        Some(FlowKey {
            src: addr(w as u32),
            dst: addr((w >> 32) as u32),
            sport: u16::from_be_bytes([p[0], p[1]]),
            dport: u16::from_be_bytes([p[2], p[3]]),
            proto: (w >> 96) as u8,
        })
    }

    /// Whether the word holds its key whole (an IPv4 key): no [`FlowKey`] need be stored or
    /// compared with it.
    #[inline(always)]
    fn exact(self) -> bool {
        (self.0 >> 96) as u32 & !0xff == KW_V4
    }

    /// The word of `key`; exact (no full compare needed) when both addresses are IPv4.
    #[inline(always)]
    fn of(key: &FlowKey) -> (KeyWord, bool) {
        if key.src.is_v4() && key.dst.is_v4() {
            let w = |a: &crate::flow::Addr| u32::from_ne_bytes(a.v4_octets());
            let (s, d) = (key.sport.to_be_bytes(), key.dport.to_be_bytes());
            let ports = u32::from_ne_bytes([s[0], s[1], d[0], d[1]]);
            (
                KeyWord::v4(w(&key.src), w(&key.dst), ports, key.proto),
                true,
            )
        } else {
            let hi = u64::from(u32::from(key.proto) | KW_OTHER) << 32;
            (KeyWord(u128::from(hi) << 64), false)
        }
    }
}

/// An IPv4 flow key in the form the fast path looks up (see [`Conntrack::lookup_steady`]): built
/// from the header's words without a [`FlowKey`]; the word slots compare (the default matches
/// no slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V4Key(KeyWord);

impl V4Key {
    /// The key of an IPv4 packet from its source and destination address words, its port pair
    /// word (each the wire bytes loaded native-endian, as [`crate::wire::V4Flow`] holds them)
    /// and its protocol.
    #[inline(always)]
    pub fn new(src: u32, dst: u32, ports: u32, proto: u8) -> V4Key {
        V4Key(KeyWord::v4(src, dst, ports, proto))
    }

    /// The key from its two words: the source address word in the low half of `addrs`, the
    /// destination above it; the port pair word in the low half of `ports_proto`, the
    /// protocol above it (as [`crate::wire::V4Words`] holds them).
    #[inline(always)]
    pub fn from_words(addrs: u64, ports_proto: u64) -> V4Key {
        let hi = ports_proto | (u64::from(KW_V4) << 32);
        V4Key(KeyWord(u128::from(addrs) | (u128::from(hi) << 64)))
    }

    /// The source address word.
    #[inline(always)]
    pub fn src(&self) -> u32 {
        self.0 .0 as u32
    }

    /// The destination address word.
    #[inline(always)]
    pub fn dst(&self) -> u32 {
        (self.0 .0 >> 32) as u32
    }

    /// The port pair word.
    #[inline(always)]
    pub fn ports(&self) -> u32 {
        (self.0 .0 >> 64) as u32
    }

    /// The protocol.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        (self.0 .0 >> 96) as u8
    }
}

/// One key slot, a whole number of cache lines. What an established packet reads comes first:
/// the key word, the flow's timer, peer, flags and state (32 bytes), then the value, whose
/// type puts its per-packet fields first, so a packet of a flow touches the slot's first two
/// lines (one, with a small value) besides the bucket's tags. The state fields are meaningful
/// on flow slots (original keys) only.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Slot<V> {
    /// The key's [`KeyWord`].
    kw: KeyWord,
    /// Flow slot: the flow is expired when `now >= deadline`. Reply slot of an unconfirmed
    /// flow: the same deadline (insert and `observe` keep the copy), so eviction compares a
    /// candidate's deadline where its tag points, without following `peer`; stale once the
    /// flow is confirmed, and then never read.
    deadline: Millis,
    /// Flow slot: the reply key's slot or [`NO_SLOT`]. Reply slot: the flow slot.
    peer: u32,
    /// `F_*` bits.
    flags: u8,
    /// Flow slot: the flow's state.
    state: FlowState,
    /// The value stored with this key. `None` only for slots that never held a key.
    value: Option<V>,
    /// The whole key of a key whose word is not exact (IPv6): compared by lookups and read by
    /// [`Conntrack::key`] and [`Conntrack::iter_flows`]. Not written for an IPv4 key, which its
    /// word holds whole (a new flow's two keys would store 80 bytes more), so stale then:
    /// read it only through [`Slot::flow_key`] or after a word that is not exact.
    key: FlowKey,
}

impl<V: Copy> Slot<V> {
    /// Writes every field in place: a `Slot` built and then assigned was built on the stack
    /// and copied in whole, twice the stores of a new flow's two keys.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn fill(
        &mut self,
        kw: KeyWord,
        key: Option<&FlowKey>,
        peer: u32,
        deadline: Millis,
        state: FlowState,
        flags: u8,
        value: &V,
    ) {
        self.kw = kw;
        self.deadline = deadline;
        self.peer = peer;
        self.flags = flags;
        self.state = state;
        self.value = Some(*value);
        // `None` only for an exact word (`insert_probed_with`).
        if let Some(key) = key.filter(|_| !kw.exact()) {
            self.key = *key;
        }
    }

    /// The key this slot holds: from its word for an IPv4 key, else the stored key.
    #[inline]
    fn flow_key(&self) -> FlowKey {
        self.kw.v4_key().unwrap_or(self.key)
    }
}

/// Where a key may live, and whether it is already there: a search done once, by
/// [`Conntrack::probe`] or [`Conntrack::probe_v4`], for [`Conntrack::insert_probed`] (a port
/// allocation's search of a candidate reply key is the insert's, not repeated). Valid until the
/// table next changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The key's [`KeyWord`], computed once for the search and the commit.
    kw: KeyWord,
    /// The first slots of the key's two buckets (equal in a one-bucket table; below 2^32, as
    /// every slot index): in 32-bit words, so a probe is 32 bytes to build and move, not 64.
    /// The buckets' free slots are read by the insert that takes the probe (the second only
    /// when the first has no room to spare), not here: a port walk's rejected candidates and
    /// most second buckets never need them.
    buckets: [u32; 2],
    /// Slot holding this key (live or expired), [`NO_SLOT`] if none.
    found: u32,
    fp: u16,
}

impl Probe {
    /// A probe of no key (no key word matches it, it names no slot): what is kept where a
    /// probe is only meaningful for some keys (a tracked one's is never used). An insert must
    /// not be given it.
    pub const NONE: Probe = Probe {
        kw: KeyWord(0),
        buckets: [0; 2],
        found: NO_SLOT,
        fp: 0,
    };

    /// Whether this is the probe of IPv4 key `key` (what a caller handing a probe on can
    /// check, in debug builds: [`Probe::NONE`] and other keys' are not).
    pub fn is_of_v4(&self, key: V4Key) -> bool {
        self.kw == key.0
    }

    /// The key's distinct buckets (one in a one-bucket table).
    #[inline(always)]
    fn bucket_list(&self) -> &[u32] {
        let n = if self.buckets[0] == self.buckets[1] {
            1
        } else {
            2
        };
        &self.buckets[..n]
    }

    /// The slot holding the key (live or expired), if any.
    #[inline(always)]
    fn found(&self) -> Option<u32> {
        (self.found != NO_SLOT).then_some(self.found)
    }

    /// One of `n` choices (`0..n`) for the probed key, from its table hash: the fingerprint's
    /// 13 bits that are the hash's and nothing else, scaled by a multiply and a shift (no
    /// division). Even over keys, and the same for a key whichever path probed it.
    #[inline(always)]
    pub fn pick(&self, n: usize) -> usize {
        (usize::from((self.fp & TAG_FP) >> 2) * n) >> 13
    }
}

/// Flows an insert will remove when it commits (expired duplicates, reused or evicted entries).
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    flows: [u32; 6],
    n: usize,
}

impl Plan {
    fn contains(&self, flow: u32) -> bool {
        self.flows.iter().take(self.n).any(|&f| f == flow)
    }

    fn add(&mut self, flow: u32) {
        if !self.contains(flow) && self.n < self.flows.len() {
            self.flows[self.n] = flow;
            self.n += 1;
        }
    }
}

/// A per-worker connection tracking table mapping flow keys to values of type `V`.
pub struct Conntrack<V: Copy> {
    tags: mem::Table<u16>,
    slots: mem::Table<Slot<V>>,
    mask: usize,
    seed: u64,
    len: usize,
    /// Keys in use (a flow with a reply key has two).
    keys: usize,
    /// Per bucket, the keys in use whose first bucket it is and that live in their second
    /// ([`F_SECOND`], [`F_PEER_SECOND`]). A key goes to its second bucket only when its first
    /// is crowded (see [`FIRST_BUCKET_ROOM`]), so nearly every count is 0, and a search that
    /// misses a key's first bucket ends there when its count is: a new flow's keys are looked
    /// for in one bucket each, not two.
    overflow: mem::Table<u32>,
    embryonic: usize,
    udp_unconfirmed: usize,
    cursor: usize,
    cfg: Config,
}

impl<V: Copy> std::fmt::Debug for Conntrack<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("keys", &self.keys)
            .field("embryonic", &self.embryonic)
            .field("udp_unconfirmed", &self.udp_unconfirmed)
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// Which bits of a bucket's tags equal `fp` once the unconfirmed bit is masked off (bit i = slot i):
/// [`group::group_match`], for tests.
#[cfg(test)]
fn match_fp(tags: &[u16], fp: u16) -> u32 {
    <&[u16; BUCKET]>::try_from(tags).map_or(0, |t| group::group_match(t, fp))
}

/// Which slots of the bucket starting at `b` are free (bit i = slot b + i): one vector compare
/// of the whole tags with [`TAG_FREE`] (a freed key's tag is set to it, and no live tag is it:
/// live fingerprints are at least [`TAG_MIN`], whatever their unconfirmed bit).
#[inline(always)]
fn match_free(tags: &[u16], b: usize) -> u32 {
    const _: () = assert!(TAG_FREE == 0 && TAG_MIN > 0);
    tags.get(b..b + BUCKET)
        .and_then(|t| <&[u16; BUCKET]>::try_from(t).ok())
        .map_or(0, |t| group::group_eq_tag(t, TAG_FREE))
}

/// Set bits of each byte value: a bucket mask's count is two loads from it (x86_64's
/// baseline has no popcount instruction, and its SWAR form is about 20 instructions).
static BYTE_ONES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u32).count_ones() as u8;
        i += 1;
    }
    t
};

/// The set bits of a bucket mask (below 2^16): a table load per byte.
#[inline(always)]
fn ones(m: u32) -> u32 {
    const _: () = assert!(BUCKET == 16);
    let lo = BYTE_ONES[(m & 0xff) as usize];
    let hi = BYTE_ONES[((m >> 8) & 0xff) as usize];
    u32::from(lo) + u32::from(hi)
}

/// The set bits of two bucket masks (each below 2^16).
#[inline(always)]
fn popcount_pair(a: u32, b: u32) -> (u32, u32) {
    (ones(a), ones(b))
}

/// Free slots a key's first bucket must have for an insert to take one without comparing
/// the second bucket. Inserting into the emptier bucket alone put a quarter to a third of the
/// keys in their second bucket at any fill (where the fast path's hint, found ahead in the
/// first bucket, misses); preferring the first bucket while it has 6 free slots keeps that
/// under 3 % up to half fill (none up to a quarter) and still fills the table to 84-90 %
/// before a key finds both buckets full (87-90 % with the emptier bucket alone; 48-65 % with
/// the first bucket whenever it has a free slot). Measured by
/// `conntrack::tests::fill_at_first_overflow` at 2^10, 2^16 and 2^20 slots.
const FIRST_BUCKET_ROOM: u32 = 6;

/// A bucket's free mask (below 2^16) with its last [`FIRST_BUCKET_ROOM`] slots free is at
/// least this, and no other mask is: such a bucket has [`FIRST_BUCKET_ROOM`] free slots,
/// which one compare tells (a count is two table loads and an add).
const LAST_SLOTS: u32 = ((1 << FIRST_BUCKET_ROOM) - 1) << (BUCKET as u32 - FIRST_BUCKET_ROOM);
const _: () = assert!(FIRST_BUCKET_ROOM >= 2 && LAST_SLOTS == 0xfc00);

/// Key slots of a table asked for `capacity`: a power of two, at least [`BUCKET`], at most
/// [`MAX_CAPACITY`]. What [`Conntrack::capacity`] reports, so occupancy is measured against it.
pub fn slots_for(capacity: usize) -> usize {
    capacity.clamp(BUCKET, MAX_CAPACITY).next_power_of_two()
}

/// The two classes of unconfirmed flows, each with its own count and budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// TCP flows whose handshake is not complete.
    Tcp,
    /// UDP flows not yet confirmed.
    Udp,
}

impl Class {
    fn of(state: FlowState) -> Class {
        match state {
            FlowState::Tcp(_) => Class::Tcp,
            FlowState::Udp { .. } => Class::Udp,
        }
    }
}

impl<V: Copy> Conntrack<V> {
    /// A table with `cfg.capacity` slots rounded up to a power of two (at least [`BUCKET`], at most
    /// [`MAX_CAPACITY`]), hashed with [`DEFAULT_SEED`]. All memory is allocated here.
    pub fn new(cfg: Config) -> Self {
        Self::with_seed(cfg, DEFAULT_SEED)
    }

    /// Like [`Conntrack::new`] with an explicit hash seed (give workers secret, different seeds to make
    /// collisions hard to aim at).
    pub fn with_seed(cfg: Config, seed: u64) -> Self {
        let cap = slots_for(cfg.capacity);
        let blank = Slot {
            kw: KeyWord::default(),
            key: FlowKey::default(),
            peer: NO_SLOT,
            deadline: 0,
            state: FlowState::Udp { replied: false },
            flags: 0,
            value: None,
        };
        Conntrack {
            tags: mem::filled(cap, TAG_FREE),
            slots: mem::filled(cap, blank),
            mask: cap - 1,
            seed,
            overflow: mem::filled(cap / BUCKET, 0),
            len: 0,
            keys: 0,
            embryonic: 0,
            udp_unconfirmed: 0,
            cursor: 0,
            cfg: Config {
                capacity: cap,
                ..cfg
            },
        }
    }

    /// Bytes a table asked for `capacity` slots allocates, computed without allocating, so a
    /// config can be sized before it runs.
    pub fn bytes_for(capacity: usize) -> u64 {
        let cap = slots_for(capacity);
        let per_slot = std::mem::size_of::<Slot<V>>() + std::mem::size_of::<u16>();
        (cap * per_slot + cap / BUCKET * std::mem::size_of::<u32>()) as u64
    }

    /// Number of key slots (a power of two). A flow with a reply key takes two.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of flows stored, including expired ones that have not been collected yet.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no flow is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of keys in use (a flow with a reply key takes two): `keys() == capacity()` is a full
    /// table, whatever mix of flows fills it.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Number of stored flows that are embryonic (TCP, not yet confirmed); never above the budget.
    pub fn embryonic(&self) -> usize {
        self.embryonic
    }

    /// Number of stored UDP flows not yet confirmed; never above the budget.
    pub fn udp_unconfirmed(&self) -> usize {
        self.udp_unconfirmed
    }

    /// The configuration in use (with `capacity` as rounded).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Finds the live, unexpired entry for `key`.
    // Always inlined: every packet calls it once, and as a call it spent ~20 instructions on
    // saving registers and passing the key and the hit through memory.
    #[inline(always)]
    pub fn lookup(&self, key: &FlowKey, now: Millis) -> Option<Hit> {
        self.lookup_hashed(key, key.table_hash(self.seed), now)
    }

    /// The table hash of an IPv4 key from its header words (see [`crate::flow::hash_v4`]): what
    /// [`Conntrack::lookup_hashed`] and [`Conntrack::prefetch`] take, without building the key.
    #[inline(always)]
    pub fn hash_v4(&self, src: u32, dst: u32, ports: u32, proto: u8) -> u64 {
        crate::flow::hash_v4(src, dst, ports, proto, self.seed)
    }

    /// [`Conntrack::hash_v4`] of a key the fast path built: straight from its two words.
    #[inline(always)]
    pub fn hash_key(&self, key: &V4Key) -> u64 {
        let w = key.0 .0;
        // The word's family mark is no part of the hash (a constant, folded into the seed's).
        let mark = u64::from(KW_V4) << 32;
        crate::flow::hash_v4_words(w as u64, ((w >> 64) as u64) ^ mark, self.seed)
    }

    /// Asks the CPU to start loading the first bucket's tags of a key with table hash `h`: a
    /// burst's walk calls it for each frame well before that frame's turn, so the lookups that
    /// follow find their tags in cache instead of waiting for memory one frame at a time.
    #[inline(always)]
    pub fn prefetch(&self, h: u64) {
        group::prefetch_at(&self.tags, self.bucket1(h));
    }

    /// The second prefetch of a burst, once [`Conntrack::prefetch`] had time to bring the tags
    /// in: the slot of the first tag in the key's first bucket that carries its fingerprint
    /// (almost always the key's own slot when it is tracked), its first two cache lines, so
    /// the lookup that follows finds key, timer and the value's per-packet fields in cache.
    /// Returns that slot as the lookup's hint ([`Conntrack::lookup_steady`]), else
    /// [`NOT_IN_FIRST`] (no tag carries it), or [`NO_HINT`].
    #[inline(always)]
    pub fn prefetch_slot(&self, h: u64) -> u32 {
        let (b, fp) = (self.bucket1(h), self.fingerprint(h));
        let Some(tags) = self.tags.get(b..b + BUCKET) else {
            return NO_HINT;
        };
        let Ok(tags) = <&[u16; BUCKET]>::try_from(tags) else {
            return NO_HINT;
        };
        let m = group::group_match(tags, fp);
        if m == 0 {
            return NOT_IN_FIRST;
        }
        // Within the bucket, so within the table (the lookup checks the hint in any case).
        let i = b + m.trailing_zeros() as usize;
        group::prefetch_two_lines_at(&self.slots, i);
        i as u32
    }

    /// [`Conntrack::lookup`] for a key whose table hash the caller computed (`h` must be
    /// `key.table_hash(seed)`, e.g. [`Conntrack::hash_v4`] of an IPv4 key).
    #[inline(always)]
    pub fn lookup_hashed(&self, key: &FlowKey, h: u64, now: Millis) -> Option<Hit> {
        self.lookup_miss(key, h, now).hit()
    }

    /// [`Conntrack::lookup_hashed`] that says why it found no live flow: [`Miss::Absent`] when
    /// no slot holds the key, [`Miss::Untracked`] when its flow expired.
    #[inline(always)]
    pub fn lookup_miss(&self, key: &FlowKey, h: u64, now: Millis) -> Miss {
        let Some(slot) = self.find(key, h) else {
            return Miss::Absent;
        };
        self.miss_at(slot, now)
    }

    /// [`Conntrack::lookup_miss`] of an IPv4 key (`h` its [`Conntrack::hash_key`]) that
    /// hands back the key's probe ([`Conntrack::probe_v4`]) from the same search: a frame
    /// that may start a new flow (a SYN, which the fast path never takes) searches its key's
    /// buckets once for its lookup and its insert. The probe is valid until the table next
    /// changes, as the lookup's result.
    #[inline(always)]
    pub fn lookup_probe_v4(&self, key: V4Key, h: u64, now: Millis) -> (Miss, Probe) {
        let p = self.probe_v4(key, h);
        let miss = match p.found() {
            None => Miss::Absent,
            Some(slot) => self.miss_at(slot, now),
        };
        (miss, p)
    }

    /// What a lookup that found its key at `slot` says at `now`.
    #[inline(always)]
    fn miss_at(&self, slot: u32, now: Millis) -> Miss {
        let Some(s) = self.slots.get(slot as usize) else {
            return Miss::Untracked;
        };
        let (flow, dir) = if s.flags & F_REPLY != 0 {
            (s.peer, Dir::Reply)
        } else {
            (slot, Dir::Original)
        };
        match self.slots.get(flow as usize) {
            Some(f) if now < f.deadline => Miss::Tracked(Hit { slot, flow, dir }),
            _ => Miss::Untracked,
        }
    }

    /// The fast path's lookup: finds the live IPv4 key (table hash `h`; `hint` a slot that may
    /// hold it, e.g. from [`Conntrack::prefetch_slot`] earlier in the burst, or [`NO_HINT`]) and,
    /// when the packet (`tcp_flags`) leaves the key's confirmed flow where it is, moves the
    /// flow's timer as [`Conntrack::touch`] would and returns the key's value.
    /// `Err(Miss::Absent)`: no slot holds the key; `Err(Miss::Untracked)`: its flow expired;
    /// `Err(Miss::Tracked(hit))`: it is tracked, but the packet needs the general path, which
    /// can take the hit instead of looking again; nothing changed then. One walk from key to flow instead of a lookup, a touch and a value read that each
    /// index the slots again.
    ///
    /// A caller that still hands an `Ok` packet to the general path (a table swap since the
    /// flow was checked, a packet too big to encapsulate) leaves the same state behind: that
    /// path either removes the flow or observes the packet, which moves the timer to the same
    /// deadline.
    #[inline(always)]
    pub fn lookup_steady(
        &mut self,
        key: V4Key,
        h: u64,
        hint: u32,
        now: Millis,
        tcp_flags: u8,
    ) -> Result<&V, Miss> {
        self.steady::<true>(key, h, hint, now, tcp_flags)
    }

    /// [`Conntrack::lookup_steady`] with a hint from [`Conntrack::prefetch_slot`] and no key
    /// removed or inserted since (only other steady lookups in between): the slot it names
    /// was live then, so it still is, and a key word that matches needs no tag check; a
    /// [`NOT_IN_FIRST`] hint still holds too, so only the key's second bucket is searched.
    #[inline(always)]
    pub fn lookup_steady_fresh(
        &mut self,
        key: V4Key,
        h: u64,
        hint: u32,
        now: Millis,
        tcp_flags: u8,
    ) -> Result<&V, Miss> {
        self.steady::<false>(key, h, hint, now, tcp_flags)
    }

    #[inline(always)]
    fn steady<const CHECK: bool>(
        &mut self,
        key: V4Key,
        h: u64,
        hint: u32,
        now: Millis,
        tcp_flags: u8,
    ) -> Result<&V, Miss> {
        // A live slot holding the key word is the key's slot (a key is stored once), so a hint
        // that holds it saves the bucket search. Its tag is in cache (the burst matched it).
        let live = |i: u32| !CHECK || self.tags.get(i as usize).is_some_and(|&t| t != TAG_FREE);
        let hinted = |s: &Slot<V>| s.kw == key.0 && live(hint);
        if !CHECK {
            // In the burst's walk, the hint's own copy of the rest: after a merge with the
            // search's result, the slot's index would be bounds-checked and its address
            // computed again. (Outside it, one copy keeps its callers' registers.)
            if self.slots.get(hint as usize).is_some_and(hinted) {
                return self.steady_at(hint, now, tcp_flags);
            }
            let slot = if hint == NOT_IN_FIRST {
                // No tag of the first bucket carried the key's fingerprint, and nothing was
                // inserted since: only the second can hold it.
                self.find_second(h, |s| s.kw == key.0)
            } else {
                self.find_lazy(h, |s| s.kw == key.0)
            };
            let slot = slot.ok_or(Miss::Absent)?;
            return self.steady_at(slot, now, tcp_flags);
        }
        let slot = match self.slots.get(hint as usize) {
            Some(s) if hinted(s) => hint,
            _ => self.find_lazy(h, |s| s.kw == key.0).ok_or(Miss::Absent)?,
        };
        self.steady_at(slot, now, tcp_flags)
    }

    /// [`Conntrack::steady`] once the key's slot is known.
    #[inline(always)]
    fn steady_at(&mut self, slot: u32, now: Millis, tcp_flags: u8) -> Result<&V, Miss> {
        let (tcp, udp) = (self.cfg.timeouts.tcp_established, self.cfg.timeouts.udp);
        // The new deadline of a steady flow whose flow slot is `f`; `Err(false)` for an expired
        // flow, `Err(true)` for one the packet does not leave where it is.
        let steady = |f: &Slot<V>| {
            if now >= f.deadline {
                return Err(false);
            }
            if f.flags & F_CONFIRMED == 0 {
                return Err(true);
            }
            let timeout = match f.state {
                FlowState::Tcp(TcpState::Established)
                    if tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 =>
                {
                    tcp
                }
                // A confirmed UDP flow: replied, or a flow without a reply key (dsr, dr),
                // confirmed by the client's second datagram (see `confirms`). Its packets leave
                // it where it is either way.
                FlowState::Udp { .. } => udp,
                _ => return Err(true),
            };
            Ok(now.saturating_add(timeout))
        };
        let reply = self.slots.get(slot as usize).ok_or(Miss::Untracked)?.flags & F_REPLY != 0;
        if !reply {
            // An original key's slot is its flow slot: one slot for key, timer and value.
            let s = self.slots.get_mut(slot as usize).ok_or(Miss::Untracked)?;
            let hit = Miss::Tracked(Hit {
                slot,
                flow: slot,
                dir: Dir::Original,
            });
            let deadline = steady(s).map_err(|live| if live { hit } else { Miss::Untracked })?;
            let Some(v) = s.value.as_ref() else {
                return Err(hit);
            };
            s.deadline = deadline;
            return Ok(v);
        }
        let s = self.slots.get(slot as usize).ok_or(Miss::Untracked)?;
        let flow = s.peer;
        let hit = Miss::Tracked(Hit {
            slot,
            flow,
            dir: Dir::Reply,
        });
        if s.value.is_none() {
            return Err(hit);
        }
        let f = self.slots.get_mut(flow as usize).ok_or(Miss::Untracked)?;
        f.deadline = steady(f).map_err(|live| if live { hit } else { Miss::Untracked })?;
        self.slots
            .get(slot as usize)
            .and_then(|s| s.value.as_ref())
            .ok_or(Miss::Untracked)
    }

    /// The value stored with the key at `slot` (from a [`Hit`] or [`Conntrack::insert`]).
    ///
    /// # Panics
    /// If `slot` is out of range or has never held a key: that is a caller bug, not an input error.
    #[inline]
    pub fn value(&self, slot: u32) -> &V {
        self.slots[slot as usize]
            .value
            .as_ref()
            .expect("conntrack slot never held a key")
    }

    /// The value stored with the key at `slot`, mutably (same conditions as [`Conntrack::value`]).
    ///
    /// # Panics
    /// If `slot` is out of range or has never held a key.
    #[inline]
    pub fn value_mut(&mut self, slot: u32) -> &mut V {
        self.slots[slot as usize]
            .value
            .as_mut()
            .expect("conntrack slot never held a key")
    }

    /// The key stored at `slot` (either direction), if the slot is in use.
    pub fn key(&self, slot: u32) -> Option<FlowKey> {
        let i = slot as usize;
        (*self.tags.get(i)? != TAG_FREE).then(|| self.slots[i].flow_key())
    }

    /// The reply key's slot of `flow`, if it has one.
    pub fn reply_slot(&self, flow: u32) -> Option<u32> {
        let f = self.flow_of(flow)?;
        let p = self.slots[f as usize].peer;
        (p != NO_SLOT).then_some(p)
    }

    /// State of the flow whose flow slot (or reply slot) is `flow`. A slot not in use reads as
    /// `Tcp(Closed)`.
    pub fn state(&self, flow: u32) -> FlowState {
        match self.flow_of(flow) {
            Some(f) => self.slots[f as usize].state,
            None => FlowState::Tcp(TcpState::Closed),
        }
    }

    /// Time at which the flow expires if no packet refreshes it (`None` for a slot not in use).
    pub fn deadline(&self, flow: u32) -> Option<Millis> {
        self.flow_of(flow).map(|f| self.slots[f as usize].deadline)
    }

    /// Tracks a new flow: its original key (client -> VIP) with a value and optionally its reply key
    /// (backend -> balancer, nat/fullnat) with its own value. Both keys share one state and one timer.
    ///
    /// `initial` is the state after the flow's first packet; do not `observe` that packet again. Every
    /// flow starts unconfirmed, whatever `initial` says (a TCP flow picked up mid-stream as
    /// `Tcp(Established)` is confirmed by its next packet), so ACK floods are held to the budget too.
    ///
    /// Free and expired slots are reused. When a key's buckets hold only live entries, or its class's
    /// budget is used up, the insert evicts the unconfirmed flow of its own class (TCP or UDP) with the
    /// earliest deadline found in its own buckets; confirmed flows are never evicted. All-or-nothing:
    /// on error nothing changes.
    pub fn insert(
        &mut self,
        now: Millis,
        orig: (&FlowKey, V),
        reply: Option<(&FlowKey, V)>,
        initial: FlowState,
    ) -> Result<u32, InsertError> {
        let ha = self.table_hash(orig.0);
        let reply = reply.as_ref().map(|(k, v)| (*k, self.table_hash(k), v));
        self.insert_hashed(now, (orig.0, ha, &orig.1), reply, initial)
    }

    /// The hash a key is placed by: what [`Conntrack::insert_hashed`] takes with each key (for
    /// an IPv4 key the same as [`Conntrack::hash_v4`] of its words).
    #[inline]
    pub fn table_hash(&self, key: &FlowKey) -> u64 {
        key.table_hash(self.seed)
    }

    /// [`Conntrack::insert`] for keys whose table hashes the caller has already computed (each
    /// key with its [`Conntrack::table_hash`], e.g. the fast path's [`Conntrack::hash_v4`] of
    /// the original key, or the hash a port allocation looked the reply key up with), so a new
    /// flow hashes each key once. A wrong hash stores the key where lookups do not find it.
    /// The values are copied straight into their slots.
    pub fn insert_hashed(
        &mut self,
        now: Millis,
        orig: (&FlowKey, u64, &V),
        reply: Option<(&FlowKey, u64, &V)>,
        initial: FlowState,
    ) -> Result<u32, InsertError> {
        debug_assert_eq!(orig.1, self.table_hash(orig.0));
        let pa = self.probe(orig.0, orig.1);
        let pb = reply.map(|(k, h, _)| {
            debug_assert_eq!(h, self.table_hash(k));
            self.probe(k, h)
        });
        let orig = (orig.0, &pa, orig.2);
        let reply = match (reply, &pb) {
            (Some((k, _, v)), Some(p)) => Some((k, p, v)),
            _ => None,
        };
        self.insert_probed(now, orig, reply, initial)
    }

    /// [`Conntrack::insert_hashed`] for keys already searched (each key with its
    /// [`Conntrack::probe`], made since the table last changed): a new flow searches each
    /// key's buckets once. The same checks, choices and all-or-nothing commit.
    #[inline(always)]
    pub fn insert_probed(
        &mut self,
        now: Millis,
        orig: (&FlowKey, &Probe, &V),
        reply: Option<(&FlowKey, &Probe, &V)>,
        initial: FlowState,
    ) -> Result<u32, InsertError> {
        let reply = reply.map(|(k, p, v)| (Some(k), p, v));
        self.insert_probed_with(now, (Some(orig.0), orig.1, orig.2), reply, initial)
    }

    /// [`Conntrack::insert_probed`] of IPv4 keys, each given by its probe alone (from
    /// [`Conntrack::probe_v4`] or [`Conntrack::probe_v4_after`]): their words hold them whole,
    /// so no [`FlowKey`] is passed, compared or stored.
    #[inline(always)]
    pub fn insert_probed_v4(
        &mut self,
        now: Millis,
        orig: (&Probe, &V),
        reply: Option<(&Probe, &V)>,
        initial: FlowState,
    ) -> Result<u32, InsertError> {
        debug_assert!(orig.0.kw.exact() && reply.is_none_or(|(p, _)| p.kw.exact()));
        let reply = reply.map(|(p, v)| (None, p, v));
        self.insert_probed_with(now, (None, orig.0, orig.1), reply, initial)
    }

    /// The insert of keys already searched; a key is `None` only when its probe's word is
    /// exact (IPv4), and then never read.
    #[inline(always)]
    fn insert_probed_with(
        &mut self,
        now: Millis,
        orig: (Option<&FlowKey>, &Probe, &V),
        reply: Option<(Option<&FlowKey>, &Probe, &V)>,
        initial: FlowState,
    ) -> Result<u32, InsertError> {
        let class = Class::of(initial);
        let pa = orig.1;
        let pb = match reply {
            // Equal keys have equal words; a word alone decides for IPv4.
            Some((k, p, _)) if p.kw == pa.kw && (p.kw.exact() || k == orig.0) => {
                return Err(InsertError::Exists)
            }
            Some((_, p, _)) => Some(p),
            None => None,
        };
        let orig = (orig.0, orig.2);
        let reply = reply.map(|(k, _, v)| (k, v));
        let mut plan = Plan::default();
        self.duplicate(pa, &mut plan, now)?;
        if let Some(p) = pb {
            self.duplicate(p, &mut plan, now)?;
        }
        // A free slot, the common case, inline; the search for one to reuse is a call.
        // Keys that go to their second bucket (a slot of the first is less than a bucket past
        // its start; with one bucket, both are the first) are counted in their first's
        // overflow: whether each does, known where a free slot of the first bucket is taken.
        let second = |p: &Probe, s: u32| s.wrapping_sub(p.buckets[0]) >= BUCKET as u32;
        let (sa, sa_second) = match self.free_slot_in(pa, None) {
            Some(s) => s,
            None => {
                let s = self.choose(pa, NO_SLOT, &mut plan, class, now)?;
                (s, second(pa, s))
            }
        };
        let (sb, sb_second) = match pb {
            Some(p) => match self.free_slot_in(p, Some(sa)) {
                Some(s) => s,
                None => {
                    // A copy of the reply's probe for the call: the caller's stays in
                    // registers.
                    let s = self.choose(&{ *p }, sa, &mut plan, class, now)?;
                    (s, second(p, s))
                }
            },
            None => (NO_SLOT, false),
        };
        // Over the budget once the flows of the class the plan removes are gone (usually
        // under it with them: no count of the plan's).
        let unconfirmed = self.unconfirmed_count(class);
        if unconfirmed >= self.cfg.embryonic_budget {
            let mut freed = 0;
            for &f in plan.flows.iter().take(plan.n) {
                freed += usize::from(self.unconfirmed_class(f) == Some(class));
            }
            if unconfirmed - freed >= self.cfg.embryonic_budget {
                self.evict_for_budget(pa, pb.copied(), &mut plan, class)?;
            }
        }

        // Commit.
        for i in 0..plan.n {
            self.remove(plan.flows[i]);
        }
        let deadline = now.saturating_add(self.timeout(initial, false));
        let mut flags = 0;
        if sa_second {
            flags = F_SECOND;
            self.overflow[pa.buckets[0] as usize / BUCKET] += 1;
        }
        if let Some(p) = pb.filter(|_| sb_second) {
            flags |= F_PEER_SECOND;
            self.overflow[p.buckets[0] as usize / BUCKET] += 1;
        }
        // The tags and the slots are as long: the slots cut to the tags' length (a bounds test
        // that never fails) show the compiler a slot's index in bounds once its tag's is.
        let tags = &mut self.tags[..];
        let slots = &mut self.slots[..tags.len()];
        tags[sa as usize] = pa.fp | TAG_UNCONFIRMED;
        slots[sa as usize].fill(pa.kw, orig.0, sb, deadline, initial, flags, orig.1);
        let mut keys = 1;
        if let (Some(p), Some((k, v))) = (pb, reply) {
            tags[sb as usize] = p.fp | TAG_UNCONFIRMED;
            slots[sb as usize].fill(p.kw, k, sa, deadline, initial, F_REPLY, v);
            keys = 2;
        }
        self.keys += keys;
        // A compiler-only fence (no instruction): the two counts stay two adds to memory, not
        // one SSE add of a constant vector, its load and its store (LLVM's SLP vectorizer).
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        self.len += 1;
        *self.unconfirmed_count_mut(class) += 1;
        Ok(sa)
    }

    /// An insert's check of a key its probe found: `Exists` while its flow lives, else the
    /// expired flow goes into the plan (or the key would be stored twice).
    #[inline(always)]
    fn duplicate(&self, p: &Probe, plan: &mut Plan, now: Millis) -> Result<(), InsertError> {
        if let Some(slot) = p.found() {
            let flow = self.flow_of(slot).unwrap_or(slot);
            if now < self.slots[flow as usize].deadline {
                return Err(InsertError::Exists);
            }
            plan.add(flow);
        }
        Ok(())
    }

    /// Feeds one packet of `flow` (its flow slot or reply slot) to the state machine and refreshes the
    /// flow's timer. `tcp_flags` is the TCP header's flags byte (see [`tcp_flags`]), 0 for UDP. Returns
    /// the new state; a slot not in use reads as `Tcp(Closed)` and nothing changes.
    pub fn observe(&mut self, flow: u32, dir: Dir, tcp_flags: u8, now: Millis) -> FlowState {
        let Some(f) = self.flow_of(flow) else {
            return FlowState::Tcp(TcpState::Closed);
        };
        if self.touch(f, tcp_flags, now) {
            return self.slots[f as usize].state;
        }
        let s = &mut self.slots[f as usize];
        let dsr = s.peer == NO_SLOT;
        let before = s.state;
        let (state, flags) = step(before, s.flags, dir, tcp_flags, dsr);
        s.state = state;
        s.flags = flags;
        if flags & F_CONFIRMED == 0 && confirms(before, state, dir, dsr) {
            s.flags |= F_CONFIRMED;
            let peer = s.peer;
            *self.unconfirmed_count_mut(Class::of(state)) -= 1;
            self.tags[f as usize] &= !TAG_UNCONFIRMED;
            if let Some(t) = self.tags.get_mut(peer as usize) {
                *t &= !TAG_UNCONFIRMED;
            }
        }
        let (confirmed, peer) = {
            let s = &self.slots[f as usize];
            (s.flags & F_CONFIRMED != 0, s.peer)
        };
        let deadline = now.saturating_add(self.timeout(state, confirmed));
        self.slots[f as usize].deadline = deadline;
        if !confirmed {
            // The reply key's copy, for eviction (see `Slot::deadline`).
            if let Some(r) = self.slots.get_mut(peer as usize) {
                r.deadline = deadline;
            }
        }
        state
    }

    /// [`Conntrack::observe`]'s common case alone: when the flow whose flow slot is `flow` (a
    /// [`Hit::flow`]) is confirmed and a packet with `tcp_flags` leaves it where it is (TCP
    /// established without SYN, FIN or RST; UDP), moves its timer and returns
    /// true. Otherwise changes nothing and returns false: the packet needs `observe`.
    #[inline(always)]
    pub fn touch(&mut self, flow: u32, tcp_flags: u8, now: Millis) -> bool {
        let t = &self.cfg.timeouts;
        let Some(s) = self.slots.get_mut(flow as usize) else {
            return false;
        };
        if s.flags & (F_CONFIRMED | F_REPLY) != F_CONFIRMED {
            return false;
        }
        let timeout = match s.state {
            FlowState::Tcp(TcpState::Established)
                if tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 =>
            {
                t.tcp_established
            }
            // Confirmed: replied, or without a reply key (dsr, dr).
            FlowState::Udp { .. } => t.udp,
            _ => return false,
        };
        s.deadline = now.saturating_add(timeout);
        true
    }

    /// Removes the flow (given by its flow slot or reply slot) and both its keys; no-op if not in use.
    pub fn remove(&mut self, flow: u32) {
        let Some(f) = self.flow_of(flow) else {
            return;
        };
        let s = &self.slots[f as usize];
        let (peer, flags) = (s.peer, s.flags);
        if flags & F_CONFIRMED == 0 {
            *self.unconfirmed_count_mut(Class::of(s.state)) -= 1;
        }
        if flags & (F_SECOND | F_PEER_SECOND) != 0 {
            self.unoverflow(f, peer, flags);
        }
        self.tags[f as usize] = TAG_FREE;
        self.keys -= 1;
        if let Some(t) = self.tags.get_mut(peer as usize) {
            *t = TAG_FREE;
            self.keys -= 1;
        }
        self.len -= 1;
    }

    /// Incremental expiry: examines at most `budget` slots from a moving cursor and removes the flows
    /// found expired at `now`. Returns how many flows were removed.
    pub fn expire(&mut self, now: Millis, budget: usize) -> usize {
        self.expire_with(now, budget, |_, _| {})
    }

    /// [`Conntrack::expire`], telling `gone` the state and original-direction value of each flow
    /// it removes (the worker counts nat/fullnat SYNs the backend never answered). Flows removed
    /// otherwise (evicted, reused once expired, `remove`) are not reported.
    pub fn expire_with(
        &mut self,
        now: Millis,
        budget: usize,
        mut gone: impl FnMut(FlowState, &V),
    ) -> usize {
        let mut left = budget.min(self.capacity());
        let mut i = self.cursor;
        let mut removed = 0;
        // A bucket's worth of slots at a time: the keys in use from one vector compare of the
        // tags (most of a table sized for its load is free), then only those slots are read.
        // The cursor stays bucket-aligned while budgets are whole buckets (the worker's is),
        // so the walk is whole buckets: a part of one only at either end.
        let off = i % BUCKET;
        if off != 0 && left > 0 {
            let take = (BUCKET - off).min(left);
            left -= take;
            removed += self.expire_bucket(i - off, ((1u32 << take) - 1) << off, now, &mut gone);
            i = (i + take) & self.mask;
        }
        // `i` is bucket-aligned here, or nothing is left.
        for _ in 0..left / BUCKET {
            removed += self.expire_bucket(i, (1u32 << BUCKET) - 1, now, &mut gone);
            i = (i + BUCKET) & self.mask;
        }
        let rest = left % BUCKET;
        if rest != 0 {
            removed += self.expire_bucket(i, (1u32 << rest) - 1, now, &mut gone);
            i = (i + rest) & self.mask;
        }
        self.cursor = i;
        removed
    }

    /// [`Conntrack::expire_with`]'s work in the bucket starting at `b`, on the slots of
    /// `window` (bit i = slot b + i): its flows expired at `now` found first (their flow
    /// slots only: the flag skips reply keys), then removed. A removal frees no other flow's
    /// flow slot, so the flows found are the ones removing them one by one would find.
    #[inline(always)]
    fn expire_bucket(
        &mut self,
        b: usize,
        window: u32,
        now: Millis,
        gone: &mut impl FnMut(FlowState, &V),
    ) -> usize {
        // A slot index is below 2^32 (`MAX_CAPACITY`): said so, the range cannot wrap.
        let b = b as u32 as usize;
        let (Some(tags), Some(slots)) =
            (self.tags.get(b..b + BUCKET), self.slots.get(b..b + BUCKET))
        else {
            return 0;
        };
        let (Ok(tags), Ok(slots)) = (
            <&[u16; BUCKET]>::try_from(tags),
            <&[Slot<V>; BUCKET]>::try_from(slots),
        ) else {
            return 0;
        };
        let mut m = !group::group_eq_tag(tags, TAG_FREE) & window;
        let mut dead = 0u32;
        while m != 0 {
            // Below `BUCKET` (a bucket mask's bit), said so that the index needs no check.
            let k = m.trailing_zeros() as usize % BUCKET;
            m &= m - 1;
            let s = &slots[k];
            if s.flags & F_REPLY == 0 && now >= s.deadline {
                dead |= 1 << k;
            }
        }
        if dead == 0 {
            return 0;
        }
        self.remove_dead(b, dead, gone)
    }

    /// Removes the flows whose flow slots are `dead`'s bits in the bucket at `b` (expired:
    /// [`Conntrack::expire_bucket`]), telling `gone` each; returns how many.
    #[inline(never)]
    fn remove_dead(
        &mut self,
        b: usize,
        mut dead: u32,
        gone: &mut impl FnMut(FlowState, &V),
    ) -> usize {
        let mut removed = 0;
        while dead != 0 {
            let j = b + dead.trailing_zeros() as usize;
            dead &= dead - 1;
            debug_assert_ne!(self.tags[j], TAG_FREE);
            let s = &self.slots[j];
            if let Some(v) = &s.value {
                gone(s.state, v);
            }
            self.remove(j as u32);
            removed += 1;
        }
        removed
    }

    /// Every stored flow (including expired ones not yet collected) as (flow slot, original key, state).
    pub fn iter_flows(&self) -> impl Iterator<Item = (u32, FlowKey, FlowState)> + '_ {
        self.tags
            .iter()
            .zip(self.slots.iter())
            .enumerate()
            .filter(|(_, (&t, s))| t != TAG_FREE && s.flags & F_REPLY == 0)
            .map(|(i, (_, s))| (i as u32, s.flow_key(), s.state))
    }

    /// The flow slot of the live key at `slot`, if any.
    #[inline]
    fn flow_of(&self, slot: u32) -> Option<u32> {
        let i = slot as usize;
        if *self.tags.get(i)? == TAG_FREE {
            return None;
        }
        let s = &self.slots[i];
        Some(if s.flags & F_REPLY != 0 { s.peer } else { slot })
    }

    /// The class of `flow` (a flow slot) if it is unconfirmed.
    fn unconfirmed_class(&self, flow: u32) -> Option<Class> {
        let s = &self.slots[flow as usize];
        (s.flags & F_CONFIRMED == 0).then(|| Class::of(s.state))
    }

    fn unconfirmed_count(&self, class: Class) -> usize {
        match class {
            Class::Tcp => self.embryonic,
            Class::Udp => self.udp_unconfirmed,
        }
    }

    fn unconfirmed_count_mut(&mut self, class: Class) -> &mut usize {
        match class {
            Class::Tcp => &mut self.embryonic,
            Class::Udp => &mut self.udp_unconfirmed,
        }
    }

    /// Idle timeout of a flow in `state`. Unconfirmed TCP flows get the SYN timeout whatever their
    /// state says, so mid-stream pickups that never see a second packet go away quickly; unconfirmed
    /// UDP flows get their own short timeout.
    fn timeout(&self, state: FlowState, confirmed: bool) -> Millis {
        let t = &self.cfg.timeouts;
        match state {
            FlowState::Udp { .. } if confirmed => t.udp,
            FlowState::Udp { .. } => t.udp_unconfirmed,
            FlowState::Tcp(TcpState::FinWait | TcpState::Closed) => t.tcp_closing,
            FlowState::Tcp(TcpState::Established) if confirmed => t.tcp_established,
            FlowState::Tcp(_) => t.tcp_syn,
        }
    }

    /// A key's two buckets (equal in a one-bucket table) and fingerprint, from its table hash
    /// ([`Conntrack::bucket1`], [`Conntrack::bucket2`], [`Conntrack::fingerprint`] in one).
    #[inline(always)]
    fn place_hashed(&self, h: u64) -> (usize, usize, u16) {
        let groups_mask = self.mask & !(BUCKET - 1);
        let b1 = (h as usize) & groups_mask;
        let mut b2 = ((h >> 24) as usize) & groups_mask;
        if b2 == b1 {
            // Keep the second choice distinct where the table has more than one bucket.
            b2 = (b1 + BUCKET) & groups_mask;
        }
        (b1, b2, self.fingerprint(h))
    }

    /// A key's first bucket, from its table hash. The hash's low 32 bits are enough (a table
    /// has at most [`MAX_CAPACITY`] slots): a bucket below 2^32 tells the compiler its tags'
    /// range cannot wrap, which saves the lookups a bounds check.
    #[inline(always)]
    fn bucket1(&self, h: u64) -> usize {
        const _: () = assert!(MAX_CAPACITY <= 1 << 32);
        (h as u32 as usize) & self.mask & !(BUCKET - 1)
    }

    /// A key's second bucket, from its table hash and first bucket (apart, so lookups that
    /// find the key in its first bucket need not compute it).
    #[inline(always)]
    fn bucket2(&self, h: u64, b1: usize) -> usize {
        let groups_mask = self.mask & !(BUCKET - 1);
        // As in `bucket1`: the same bucket, known to be below 2^32.
        let mut b2 = ((h >> 24) as u32 as usize) & groups_mask;
        if b2 == b1 {
            // Keep the second choice distinct where the table has more than one bucket.
            b2 = (b1 + BUCKET) & groups_mask;
        }
        b2
    }

    /// A key's tag fingerprint, from its table hash.
    #[inline(always)]
    fn fingerprint(&self, h: u64) -> u16 {
        // The hash's top 15 bits with `TAG_MIN`'s bit set: never free, never 1, in two
        // instructions on every lookup (a maximum took five); 14 bits left to tell keys apart
        // (a bucket's 16 tags match another key's about once in 1000 lookups).
        const _: () = assert!(TAG_FP == 0x7fff && TAG_MIN == 2);
        ((h >> 49) as u16) | TAG_MIN
    }

    /// Whether any key whose first bucket starts at `b` lives in its second bucket (else a
    /// key that is not in its first bucket is in neither).
    #[inline(always)]
    fn overflowed(&self, b: usize) -> bool {
        self.overflow.get(b / BUCKET).is_none_or(|&n| n != 0)
    }

    /// Uncounts the keys of flow slot `f` (with reply slot `peer`) that live in their second
    /// buckets (`flags`, its flags): each key's first bucket from its hash, computed again
    /// (from an IPv4 key's word alone). Not per new flow: most keys are in their first bucket,
    /// and then this is not called.
    #[inline(never)]
    fn unoverflow(&mut self, f: u32, peer: u32, flags: u8) {
        let first = |ct: &Self, slot: u32| {
            let s = &ct.slots[slot as usize];
            let h = if s.kw.exact() {
                ct.hash_key(&V4Key(s.kw))
            } else {
                ct.table_hash(&s.key)
            };
            debug_assert_eq!(h, ct.table_hash(&s.flow_key()));
            ct.bucket1(h) / BUCKET
        };
        if flags & F_SECOND != 0 {
            let b = first(self, f);
            self.overflow[b] -= 1;
        }
        if flags & F_PEER_SECOND != 0 && (peer as usize) < self.slots.len() {
            let b = first(self, peer);
            self.overflow[b] -= 1;
        }
    }

    /// The slot in bucket `b` whose tag carries `fp` and whose slot `eq` accepts, if any.
    #[inline(always)]
    fn find_in(&self, b: usize, fp: u16, eq: impl Fn(&Slot<V>) -> bool) -> Option<u32> {
        let tags: &[u16; BUCKET] = self.tags.get(b..b + BUCKET)?.try_into().ok()?;
        let mut m = group::group_match(tags, fp);
        while m != 0 {
            let i = b + m.trailing_zeros() as usize;
            m &= m - 1;
            if self.slots.get(i).is_some_and(&eq) {
                return Some(i as u32);
            }
        }
        None
    }

    /// The slot in either of the buckets of table hash `h` that `eq` accepts (live or expired).
    #[inline(always)]
    fn find_with(&self, h: u64, eq: impl Fn(&Slot<V>) -> bool) -> Option<u32> {
        let (b1, b2, fp) = self.place_hashed(h);
        if let Some(i) = self.find_in(b1, fp, &eq) {
            return Some(i);
        }
        // A one-bucket table's count is 0: no key lives in a second bucket that is its first.
        debug_assert!(b2 != b1 || !self.overflowed(b1));
        if !self.overflowed(b1) {
            return None;
        }
        self.find_in(b2, fp, &eq)
    }

    /// [`Conntrack::find_with`] for the fast path: the second bucket computed only when the
    /// first does not hold the key.
    #[inline(always)]
    fn find_lazy(&self, h: u64, eq: impl Fn(&Slot<V>) -> bool) -> Option<u32> {
        let (b1, fp) = (self.bucket1(h), self.fingerprint(h));
        if let Some(i) = self.find_in(b1, fp, &eq) {
            return Some(i);
        }
        if !self.overflowed(b1) {
            return None;
        }
        let b2 = self.bucket2(h, b1);
        if b2 == b1 {
            return None;
        }
        self.find_in(b2, fp, &eq)
    }

    /// [`Conntrack::find_lazy`] of a key known not to be in its first bucket.
    #[inline(always)]
    fn find_second(&self, h: u64, eq: impl Fn(&Slot<V>) -> bool) -> Option<u32> {
        let b1 = self.bucket1(h);
        if !self.overflowed(b1) {
            return None;
        }
        let b2 = self.bucket2(h, b1);
        if b2 == b1 {
            return None;
        }
        self.find_in(b2, self.fingerprint(h), &eq)
    }

    /// The slot holding `key` (live or expired): the per-packet half of [`Conntrack::probe`].
    #[inline(always)]
    fn find(&self, key: &FlowKey, h: u64) -> Option<u32> {
        let (kw, exact) = KeyWord::of(key);
        self.find_with(h, |s| s.kw == kw && (exact || s.key == *key))
    }

    /// A key's buckets, fingerprint and key word from its table hash `h` (its
    /// [`Conntrack::table_hash`]), and its slot if the table holds it (live or expired).
    #[inline(always)]
    pub fn probe(&self, key: &FlowKey, h: u64) -> Probe {
        let (kw, exact) = KeyWord::of(key);
        self.probe_kw(kw, h, |s| s.kw == kw && (exact || s.key == *key))
    }

    /// [`Conntrack::probe`] of an IPv4 key from its header words (`h` its
    /// [`Conntrack::hash_v4`]): its word decides, no [`FlowKey`] is compared.
    #[inline(always)]
    pub fn probe_v4(&self, key: V4Key, h: u64) -> Probe {
        self.probe_kw(key.0, h, |s| s.kw == key.0)
    }

    /// [`Conntrack::probe_v4`] of a key a lookup found in no slot ([`Miss::Absent`]), the
    /// table unchanged since (`absent`; else the search as `probe_v4`'s): its buckets and their
    /// free slots without searching them for the key.
    #[inline(always)]
    pub fn probe_v4_after(&self, key: V4Key, h: u64, absent: bool) -> Probe {
        self.probe_kw_if(key.0, h, !absent, |s| s.kw == key.0)
    }

    #[inline(always)]
    fn probe_kw(&self, kw: KeyWord, h: u64, eq: impl Fn(&Slot<V>) -> bool) -> Probe {
        self.probe_kw_if(kw, h, true, eq)
    }

    /// A probe, searching the buckets for the key only if `search`.
    #[inline(always)]
    fn probe_kw_if(
        &self,
        kw: KeyWord,
        h: u64,
        search: bool,
        eq: impl Fn(&Slot<V>) -> bool,
    ) -> Probe {
        const _: () = assert!(MAX_CAPACITY <= NO_SLOT as usize);
        let (b1, b2, fp) = self.place_hashed(h);
        let found = if search { self.find_with(h, eq) } else { None };
        Probe {
            kw,
            buckets: [b1 as u32, b2 as u32],
            found: found.unwrap_or(NO_SLOT),
            fp,
        }
    }

    /// Whether the key a probe searched for is tracked by a live flow (what
    /// [`Conntrack::lookup`] would find), as opposed to absent or expired.
    #[inline(always)]
    pub fn probe_live(&self, p: &Probe, now: Millis) -> bool {
        let Some(slot) = p.found() else {
            return false;
        };
        let Some(s) = self.slots.get(slot as usize) else {
            return false;
        };
        let flow = if s.flags & F_REPLY != 0 { s.peer } else { slot };
        self.slots
            .get(flow as usize)
            .is_some_and(|f| now < f.deadline)
    }

    /// A free slot (other than `exclude`) for a key with probe `p`: in its first bucket while
    /// that has [`FIRST_BUCKET_ROOM`] free slots, else in the emptier of its buckets; each
    /// bucket's free slots one vector compare of its tags (the second's only when needed).
    #[inline(always)]
    fn free_slot(&self, p: &Probe, exclude: Option<u32>) -> Option<u32> {
        self.free_slot_in(p, exclude).map(|(s, _)| s)
    }

    /// [`Conntrack::free_slot`] with whether the slot is in the key's second bucket (a
    /// distinct one), as each of its choices knows.
    #[inline(always)]
    fn free_slot_in(&self, p: &Probe, exclude: Option<u32>) -> Option<(u32, bool)> {
        // (free slots, those other than `exclude`) of bucket `b`. (An `Option`, not
        // `NO_SLOT`: a caller without a slot to exclude has no test of it in its code.)
        let unexcluded = |b: usize, m: u32| match exclude.map(|x| x.wrapping_sub(b as u32)) {
            Some(off) if off < BUCKET as u32 => m & !(1u32 << off),
            _ => m,
        };
        let free = |b: usize| {
            let m = match_free(&self.tags, b);
            (m, unexcluded(b, m))
        };
        let b1 = p.buckets[0] as usize;
        let m1 = match_free(&self.tags, b1);
        let at = |b: usize, u: u32| b as u32 + u.trailing_zeros();
        // The first bucket while it has room to spare: a key there is found by the fast
        // path's hint (its slot searched ahead in the first bucket alone). (In a one-bucket
        // table, what the tests below would take too.)
        // Its last FIRST_BUCKET_ROOM slots free (a bucket fills from its first free slot, so
        // in a table far from full they usually are) says so without counting: a compare.
        // Its first free slot then, or its second when the first is `exclude` (the other
        // key's slot, rarely in the same bucket): `exclude`'s bit is not cleared first.
        if m1 >= LAST_SLOTS {
            let s = at(b1, m1);
            let s = match exclude == Some(s) {
                true => at(b1, m1 & (m1 - 1)),
                false => s,
            };
            return Some((s, false));
        }
        let u1 = unexcluded(b1, m1);
        if u1 != 0 && ones(m1) >= FIRST_BUCKET_ROOM {
            return Some((at(b1, u1), false));
        }
        let b2 = p.buckets[1] as usize;
        if b1 == b2 {
            return (u1 != 0).then(|| (at(b1, u1), false));
        }
        let (m2, u2) = free(b2);
        // The second bucket only when it has strictly more free slots (or the first has none
        // to offer): both counts from one SWAR popcount.
        let (n1, n2) = popcount_pair(m1, m2);
        if u2 != 0 && (u1 == 0 || n2 > n1) {
            Some((at(b2, u2), true))
        } else {
            (u1 != 0).then(|| (at(b1, u1), false))
        }
    }

    /// An insert over its class's budget: the unconfirmed flow of `class` with the earliest
    /// deadline in the buckets of `pa` and `pb` goes into the plan, else the budget's error.
    /// The reply's probe by value: a copy made on this uncommon path, so the insert's caller
    /// keeps its reply probe in registers (a reference would hold it in memory throughout).
    #[inline(always)]
    fn evict_for_budget(
        &self,
        pa: &Probe,
        pb: Option<Probe>,
        plan: &mut Plan,
        class: Class,
    ) -> Result<(), InsertError> {
        let victim = self
            .oldest_unconfirmed(pa, plan, NO_SLOT, class)
            .into_iter()
            .chain(pb.and_then(|p| self.oldest_unconfirmed(&p, plan, NO_SLOT, class)))
            .min_by_key(|&(_, d)| d)
            .ok_or(match class {
                Class::Tcp => InsertError::EmbryonicBudget,
                Class::Udp => InsertError::UdpBudget,
            })?;
        plan.add(victim.0);
        Ok(())
    }

    /// Picks a slot (other than `exclude`) for a key with probe `p`: free, else one the plan already
    /// frees, else expired, else the least recently active unconfirmed entry of `class`.
    #[inline(never)]
    fn choose(
        &self,
        p: &Probe,
        exclude: u32,
        plan: &mut Plan,
        class: Class,
        now: Millis,
    ) -> Result<u32, InsertError> {
        let buckets = p.bucket_list();
        if let Some(slot) = self.free_slot(p, (exclude != NO_SLOT).then_some(exclude)) {
            return Ok(slot);
        }
        // Live slot whose flow is going anyway, or has expired.
        for &b in buckets {
            for slot in b..b + BUCKET as u32 {
                if slot == exclude {
                    continue;
                }
                let Some(flow) = self.flow_of(slot) else {
                    continue;
                };
                if plan.contains(flow) || now >= self.slots[flow as usize].deadline {
                    plan.add(flow);
                    return Ok(slot);
                }
            }
        }
        if let Some((flow, _)) = self.oldest_unconfirmed(p, plan, exclude, class) {
            // The victim may own the slot through either of its keys; pick the one in this bucket.
            let slot = buckets
                .iter()
                .flat_map(|&b| b..b + BUCKET as u32)
                .find(|&i| i != exclude && self.flow_of(i) == Some(flow));
            if let Some(slot) = slot {
                plan.add(flow);
                return Ok(slot);
            }
        }
        Err(InsertError::Full)
    }

    /// The unconfirmed flow of `class` with the earliest deadline among the keys in `p`'s buckets
    /// (skipping flows already planned for removal and the slot `exclude`), with that deadline.
    fn oldest_unconfirmed(
        &self,
        p: &Probe,
        plan: &Plan,
        exclude: u32,
        class: Class,
    ) -> Option<(u32, Millis)> {
        const _: () = assert!(TAG_UNCONFIRMED == 0x8000);
        let mut best: Option<(u32, Millis)> = None;
        for &b in p.bucket_list() {
            let b = b as usize;
            let Some(tags) = self.tags.get(b..b + BUCKET) else {
                continue;
            };
            let Ok(tags) = <&[u16; BUCKET]>::try_from(tags) else {
                continue;
            };
            // Only the unconfirmed keys' slots: a set of bits from one vector compare.
            let mut m = group::top_bits(tags);
            if let off @ 0..16 = exclude.wrapping_sub(b as u32) {
                m &= !(1u32 << off);
            }
            while m != 0 {
                let i = b + m.trailing_zeros() as usize;
                m &= m - 1;
                let Some(s) = self.slots.get(i) else {
                    continue;
                };
                // A reply key holds its unconfirmed flow's deadline and class too: no walk to
                // the flow slot but for a better candidate.
                let d = s.deadline;
                if best.is_none_or(|(_, bd)| d < bd) && Class::of(s.state) == class {
                    let flow = if s.flags & F_REPLY != 0 {
                        s.peer
                    } else {
                        i as u32
                    };
                    if !plan.contains(flow) {
                        best = Some((flow, d));
                    }
                }
            }
        }
        best
    }
}

/// Whether a packet in `dir` that moved a flow from `before` to `after` confirms it (see the module
/// doc): a TCP handshake completed, or a client datagram after the backend's reply (flows without a
/// reply key, `dsr`: the client's second datagram).
#[inline]
fn confirms(before: FlowState, after: FlowState, dir: Dir, dsr: bool) -> bool {
    match (before, after) {
        (_, FlowState::Tcp(t)) => t == TcpState::Established,
        (FlowState::Udp { replied }, _) => dir == Dir::Original && (replied || dsr),
        (FlowState::Tcp(_), FlowState::Udp { .. }) => false,
    }
}

/// The state machine: new state and flow flags after a packet in `dir` with `tcp` flags. `dsr` flows
/// have no reply key, so the client's ACK after its SYN is the only sign of a completed handshake.
fn step(state: FlowState, flags: u8, dir: Dir, tcp: u8, dsr: bool) -> (FlowState, u8) {
    use tcp_flags::{ACK, FIN, RST, SYN};
    use TcpState::*;
    let s = match state {
        FlowState::Udp { replied } => {
            return (
                FlowState::Udp {
                    replied: replied || dir == Dir::Reply,
                },
                flags,
            )
        }
        FlowState::Tcp(s) => s,
    };
    if tcp & RST != 0 {
        return (FlowState::Tcp(Closed), flags);
    }
    if tcp & FIN != 0 {
        let flags = flags
            | match dir {
                Dir::Original => F_FIN_ORIG,
                Dir::Reply => F_FIN_REPLY,
            };
        let both = flags & (F_FIN_ORIG | F_FIN_REPLY) == F_FIN_ORIG | F_FIN_REPLY;
        let next = if both || s == Closed { Closed } else { FinWait };
        return (FlowState::Tcp(next), flags);
    }
    let syn = tcp & SYN != 0;
    let ack = tcp & ACK != 0;
    let next = match (s, dir) {
        (SynSent, Dir::Reply) if syn && ack => SynReceived,
        (SynSent, Dir::Original) if dsr && ack && !syn => Established,
        (SynReceived, Dir::Original) if ack && !syn => Established,
        // A fresh SYN on a closed flow is the client reusing the port: a new handshake starts.
        (Closed, Dir::Original) if syn && !ack => SynSent,
        (s, _) => s,
    };
    let flags = if next == SynSent && s == Closed {
        flags & !(F_FIN_ORIG | F_FIN_REPLY)
    } else {
        flags
    };
    (FlowState::Tcp(next), flags)
}

#[cfg(test)]
mod tests;
