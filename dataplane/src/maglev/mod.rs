//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI'16).
//!
//! [`build`] fills a prime-sized table with backend indices. Every backend walks its own permutation
//! of the slots (an offset and a skip derived from its key) and claims the next free slot of that
//! permutation, as in the paper. Weights are honoured with exact integer quotas: each backend gets
//! `size * weight / sum(weights)` slots rounded by the largest-remainder method, and stops claiming
//! once it has them. So every backend's share is within one slot of its weight share, and equal
//! weights give every backend `floor` or `ceil` of `size / n` slots. Claims are paced by weight (a
//! backend of weight w claims its k-th slot at time (k + 1/2) / w, see `Tick`); with equal weights
//! that is the paper's round-robin in key order.
//!
//! The table depends only on the set of (key, weight) pairs: backends are ordered by key before
//! anything else, so the caller's order only decides which index a slot holds, never which backend.
//!
//! Known extra disruption, as in the paper's algorithm (a straightforward implementation of it
//! gives the same table slot for slot): two backends whose keys hash to one skip walk the same
//! cycle of slots a few steps apart, so when the set changes they also swap slots between them
//! (seven equal backends with such a pair: a removal moved 24% of the slots, against a share of
//! 14.3%; the pair swapped 10% of them). For n backends about n^2 / 131074 pairs share a skip at
//! the default size, so small sets rarely have one (7 backends: 1 set in 3000) and large sets have
//! a few whose swaps are a small part of the table. Re-drawing one of the two skips does not cure
//! it: the survivor's skip then changes when its partner leaves. Established flows are not moved
//! by any of this (conntrack wins over the table); only new flows of the swapped slots go to the
//! pair's other backend.
#![forbid(unsafe_code)]

use crate::flow::hash_bytes;

/// Default lookup table size: a prime, so every permutation visits every slot.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// Largest table size accepted: slot arithmetic is done in `u32` and must not overflow `2 * size`.
const MAX_TABLE_SIZE: usize = 1 << 31;

/// Seed of the hash that picks where a backend's permutation starts.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed of the hash that picks a backend's permutation step; must differ from [`OFFSET_SEED`] so
/// that offset and skip are independent.
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// One backend as Maglev sees it: a stable identity and a weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Stable identity (for example `"198.18.1.10:8080"`): the permutation is derived from it, so the
    /// same backend lands on the same slots whatever else is in the set and in whatever order.
    pub key: Vec<u8>,
    /// Relative weight; 0 excludes the backend.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size is not a prime (or is below 3, or above 2^31).
    #[error("table size {0} is not a prime between 3 and 2^31")]
    NotPrime(usize),
    /// More backends than the table can index (`u16::MAX` - 1) or than it has slots.
    #[error("{backends} backends do not fit a table of {size} slots")]
    TooManyBackends {
        /// Backends given.
        backends: usize,
        /// Table size asked for.
        size: usize,
    },
    /// Two backends share a key.
    #[error("duplicate backend key")]
    DuplicateKey,
}

/// An immutable lookup table: slot -> index into the backend slice given to [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    slots: Box<[u16]>,
}

/// Marks a slot of a table whose backends all have weight 0.
pub const EMPTY: u16 = u16::MAX;

impl Maglev {
    /// The backend index for a flow hash, or `None` when every backend has weight 0 (or none exist).
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        if self.slots.is_empty() {
            return None;
        }
        let s = self.slots[(hash % self.slots.len() as u64) as usize];
        (s != EMPTY).then_some(s)
    }

    /// The raw slots (for tests and statistics).
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

/// Whether `n` is a size [`build`] accepts: a prime between 3 and 2^31.
pub fn is_valid_table_size(n: usize) -> bool {
    if !(3..=MAX_TABLE_SIZE).contains(&n) || n % 2 == 0 {
        return false;
    }
    // Trial division by odd numbers: at most ~23k divisions for sizes near 2^31, negligible next to
    // filling the table itself.
    let mut d = 3usize;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Free slots left when population stops walking permutations and picks from a list of free slots,
/// for a table of `m` slots.
///
/// Maglev's cost is the end: with F slots free a claim probes about M/F slots, so the last few
/// hundred claims take most of the ~M ln M probes. With a list of the free slots a claim costs F
/// multiplications instead (the permutation position of each free slot), so the list wins below
/// F ~ sqrt(M) times a constant: measured at M = 65537, switching at 128 to 192 free slots was
/// fastest (64 and 256 were 1-2 % slower). Both find the same slot, so this only changes the
/// speed.
fn endgame_free(m: u32) -> u32 {
    m.isqrt() * 5 / 8
}

/// One backend during population: where it is in its permutation and how many slots it claims.
struct Cursor {
    /// Index into the caller's slice, written into the slots it claims.
    index: u16,
    /// Next slot of its permutation to try.
    pos: u32,
    /// Permutation step, in `1..size`, and its multiples by 2, 3 and 4 modulo the size.
    steps: [u32; 4],
    /// Inverse of `skip` modulo the table size, or 0 until the end game needs it.
    inv_skip: u32,
    /// Slots it claims in all.
    quota: u32,
    /// Its weight, which paces its claims.
    weight: u32,
}

/// The backends of one weight: they claim at the same instants, one slot each, in key order.
struct Group {
    /// Their common weight.
    weight: u32,
    /// Claims each has made so far (the group's clock position).
    claims: u32,
    /// Their cursors: `cursors[start..start + live]`; the finished ones fall off its end.
    start: usize,
    /// How many still claim: those whose quota is above `claims`. The members are in key order
    /// and have equal exact shares, so their quotas differ by at most the one slot of the rounding,
    /// which goes to the smaller keys first: quotas never rise along the members, and the ones
    /// done are always a suffix.
    live: usize,
    /// Calendar bucket of its next tick, `floor((2 * claims + 1) * total / (2 * weight))`, where
    /// `total` is the sum of the weights: about one bucket per slot.
    bucket: u64,
    /// Remainder of that division, so that moving to the next tick costs no division.
    rem: u64,
    /// `total / weight`: how many buckets a tick moves.
    step: u64,
    /// `2 * (total % weight)`: how much the remainder grows per tick.
    step_rem: u64,
    /// The next group in the same bucket, or [`NO_GROUP`].
    next: u32,
}

/// End of a bucket's list of groups.
const NO_GROUP: u32 = u32::MAX;

impl Group {
    fn new(weight: u32, start: usize, total: u64) -> Group {
        let w = u64::from(weight);
        Group {
            weight,
            claims: 0,
            start,
            live: 0,
            bucket: total / (2 * w),
            rem: total % (2 * w),
            step: total / w,
            step_rem: 2 * (total % w),
            next: NO_GROUP,
        }
    }

    /// Moves the bucket on by one tick: the numerator grows by `2 * total`, the denominator is
    /// `2 * weight`, and both remainders are below it, so one subtraction normalises.
    fn advance(&mut self) {
        let d = 2 * u64::from(self.weight);
        self.bucket += self.step;
        self.rem += self.step_rem;
        if self.rem >= d {
            self.rem -= d;
            self.bucket += 1;
        }
    }
}

/// When a group claims next, on a clock where a backend of weight `w` claims its k-th slot at
/// `(k + 1/2) / w`. Only its own weight enters, so adding or removing other backends leaves the
/// relative order of everyone else's claims unchanged, which keeps the disruption small with unequal
/// weights (a plain round-robin lets light backends finish early and reshuffles the heavy ones' late
/// claims). With equal weights this is Maglev's round-robin in key order. Ties go to the lighter group.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tick {
    /// The group's `claims`.
    claims: u32,
    /// The group's weight.
    weight: u32,
    /// Index of the group.
    group: usize,
}

impl Ord for Tick {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // (2k + 1) / w compared without division: 2k + 1 <= 2^32 - 1 and w < 2^32, so each product
        // fits a u64.
        let a = (2 * u64::from(self.claims) + 1) * u64::from(other.weight);
        let b = (2 * u64::from(other.claims) + 1) * u64::from(self.weight);
        a.cmp(&b)
            .then(self.weight.cmp(&other.weight))
            .then(self.group.cmp(&other.group))
    }
}

impl PartialOrd for Tick {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The table being filled.
struct Fill {
    slots: Box<[u16]>,
    /// Occupancy as a bitset of `2 * m` bits where bit `s + m` repeats bit `s`, so that the probes
    /// `p + k * skip` (all below `2 * m`) need no reduction modulo `m`. Its length is a power of
    /// two so that a mask, not a bounds check, keeps an index in range. For the default size 16 KiB
    /// of it are used (32 KiB allocated): probing stays in L1 instead of striding through the
    /// 128 KiB slot array.
    taken: Vec<u64>,
    /// Table size.
    m: u32,
    /// `floor(2^64 / m)`, for reducing modulo `m` without a division.
    m_recip: u64,
    /// Slots still free.
    free: u32,
    /// [`endgame_free`] of `m`.
    endgame_at: u32,
    /// Whether `free` has dropped to `endgame_at`: claims then pick from `free_list` and
    /// `taken` is no longer kept.
    endgame: bool,
    /// The free slots in the end game.
    free_list: Vec<u32>,
}

impl Fill {
    fn new(m: u32) -> Fill {
        Fill {
            slots: vec![EMPTY; m as usize].into_boxed_slice(),
            taken: vec![0; (2 * m as usize).div_ceil(64).next_power_of_two()],
            m,
            m_recip: u64::MAX / u64::from(m),
            free: m,
            endgame_at: endgame_free(m),
            endgame: false,
            free_list: Vec::new(),
        }
    }

    /// Gives each of `members`, in order, the first free slot of its permutation from its cursor
    /// on.
    ///
    /// The caller guarantees a free slot exists for each (quotas add up to `m`, so they do while
    /// the members have slots to claim), and a prime `m` makes every permutation reach it: the
    /// probe loop ends.
    fn claim(&mut self, members: &mut [Cursor]) {
        let m = self.m;
        if self.endgame {
            for c in members.iter_mut() {
                let pos = self.pick(c);
                self.slots[pos as usize] = c.index;
                c.pos = add_mod(pos, c.steps[0], m);
            }
            return;
        }
        for c in members.iter_mut() {
            let pos = self.walk(c);
            self.taken[(pos >> 6) as usize] |= 1 << (pos & 63);
            let twin = pos + m;
            self.taken[(twin >> 6) as usize] |= 1 << (twin & 63);
            self.slots[pos as usize] = c.index;
            c.pos = add_mod(pos, c.steps[0], m);
        }
        // Lossless: at most 65534 members.
        self.free -= members.len() as u32;
        if self.free <= self.endgame_at {
            self.endgame = true;
            // The free slots are the clear bits: visit them word by word, not slot by slot.
            for (w, &bits) in (0u32..).zip(&self.taken[..(m as usize).div_ceil(64)]) {
                let mut free = !bits;
                while free != 0 {
                    let s = w * 64 + free.trailing_zeros();
                    if s < m {
                        self.free_list.push(s);
                    }
                    free &= free - 1;
                }
            }
        }
    }

    /// The first free slot of `c`'s permutation, walking it four probes at a time.
    ///
    /// A probe's outcome is a coin toss in a filling table, and a mispredicted branch costs more
    /// than several probes: so four independent probes share one branch, which at low fill almost
    /// always exits on the first round, and the free one among them is chosen with conditional
    /// moves (`select`), never with a branch per probe. A first-probe shortcut branch was 10 %
    /// slower for this reason.
    fn walk(&self, c: &Cursor) -> u32 {
        let m = self.m;
        let mask = self.taken.len() - 1;
        let taken = &self.taken[..=mask];
        // 1 when slot `p` (or `p - m`) is taken.
        let bit = |p: u32| (taken[(p >> 6) as usize & mask] >> (p & 63)) & 1;
        let [s1, s2, s3, s4] = c.steps;
        let mut p = c.pos;
        loop {
            let all = bit(p) & bit(p + s1) & bit(p + s2) & bit(p + s3);
            if all == 0 {
                break;
            }
            p = add_mod(p, s4, m);
        }
        // The first free of the four: the loop's loads, reused.
        let (t0, t1, t2) = (bit(p) != 0, bit(p + s1) != 0, bit(p + s2) != 0);
        let q = select(t0, select(t1, select(t2, p + s3, p + s2), p + s1), p);
        select(q >= m, q.wrapping_sub(m), q)
    }

    /// The first free slot of `c`'s permutation in the end game, taken off the free list.
    fn pick(&mut self, c: &mut Cursor) -> u32 {
        let m = self.m;
        // The first free slot of the permutation is the one fewest steps away: slot s is
        // (s - pos) / skip steps from pos, modulo m.
        if c.inv_skip == 0 {
            c.inv_skip = inverse_mod(c.steps[0], m);
        }
        let mut best = (u32::MAX, 0usize);
        for (i, &s) in self.free_list.iter().enumerate() {
            let ahead = select(
                s >= c.pos,
                s.wrapping_sub(c.pos),
                (s + m).wrapping_sub(c.pos),
            );
            let steps = self.reduce(u64::from(ahead) * u64::from(c.inv_skip));
            if steps < best.0 {
                best = (steps, i);
            }
        }
        self.free_list.swap_remove(best.1)
    }

    /// `x mod m` for `x < 2^62` (Barrett reduction: the estimated quotient is at most one short).
    #[inline]
    fn reduce(&self, x: u64) -> u32 {
        let q = ((u128::from(x) * u128::from(self.m_recip)) >> 64) as u64;
        let r = x - q * u64::from(self.m);
        // r < 2m <= 2^32 before the correction, below m after it.
        (if r >= u64::from(self.m) {
            r - u64::from(self.m)
        } else {
            r
        }) as u32
    }
}

/// `(a + b) mod m` for `a, b < m <= 2^31`: the sum fits a u32 and needs at most one subtraction.
#[inline(always)]
fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let s = a + b;
    select(s >= m, s.wrapping_sub(m), s)
}

/// `if c { a } else { b }`, meant to become a conditional move: `c` is a probe outcome, which no
/// branch predictor guesses. LLVM may still turn it into a branch (it did in one draft of `walk`,
/// making the build 40 % slower); `std::hint::select_unpredictable` would forbid that but needs
/// Rust 1.88, above the workspace's 1.85. After changing the probe loop, check the disassembly
/// for `cmov` and the time with `examples/maglev_build`.
#[inline(always)]
fn select(c: bool, a: u32, b: u32) -> u32 {
    if c {
        a
    } else {
        b
    }
}

/// The inverse of `a` modulo the prime `m` (extended Euclid), for `0 < a < m`.
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    // Lossless: the result is in 0..m.
    t0.rem_euclid(i64::from(m)) as u32
}

/// The skip of the backend with `key` in a table of `m` slots: its permutation's step, in
/// `1..m` (lossless: below `m`, which fits a u32).
#[inline]
fn skip_of(key: &[u8], m: u32) -> u32 {
    (hash_bytes(key, SKIP_SEED) % u64::from(m - 1)) as u32 + 1
}

/// Builds the table for `backends` with `size` slots. Pure and deterministic.
///
/// Slot -> backend key is the same for every order of `backends`; slots hold indices into
/// `backends`. A backend of weight 0 gets no slot; with no weighted backend every slot is [`EMPTY`].
pub fn build(backends: &[MaglevBackend], size: usize) -> Result<Maglev, MaglevError> {
    if !is_valid_table_size(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if backends.len() > usize::from(u16::MAX - 1) || backends.len() > size {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    // Key order is what makes the result independent of the caller's order. The casts are lossless:
    // the length was checked against `u16::MAX - 1` above. Keys are compared by their first 16
    // bytes as one number first (zero-padded, big-endian: the same order as the bytes'), and in
    // full only when those are equal: most comparisons then cost no call to `memcmp`.
    let mut by_key: Vec<(u128, u16)> = (0..backends.len() as u16)
        .map(|i| (key_prefix(&backends[usize::from(i)].key), i))
        .collect();
    let full = |a: u16, b: u16| {
        backends[usize::from(a)]
            .key
            .cmp(&backends[usize::from(b)].key)
    };
    by_key.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| full(a.1, b.1)));
    if by_key
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && full(w[0].1, w[1].1).is_eq())
    {
        return Err(MaglevError::DuplicateKey);
    }
    let order: Vec<u16> = by_key.iter().map(|&(_, i)| i).collect();

    // Lossless: size <= 2^31.
    let m = size as u32;
    let quotas = quotas(backends, &order, m);
    // By weight, then key: a group's members claim in key order. Weight and rank packed in one
    // number sort faster than the cursors themselves.
    let mut by_weight: Vec<u64> = (0u64..)
        .zip(&order)
        .zip(&quotas)
        .filter(|&(_, &q)| q > 0)
        .map(|((rank, &i), _)| u64::from(backends[usize::from(i)].weight) << 16 | rank)
        .collect();
    by_weight.sort_unstable();
    let mut cursors: Vec<Cursor> = by_weight
        .iter()
        .map(|&key| {
            // Lossless: the rank is below 2^16.
            let rank = (key & 0xffff) as usize;
            let index = order[rank];
            let b = &backends[usize::from(index)];
            // Lossless: both values are below `m`, which fits a u32.
            let pos = (hash_bytes(&b.key, OFFSET_SEED) % u64::from(m)) as u32;
            let skip = skip_of(&b.key, m);
            let s2 = add_mod(skip, skip, m);
            Cursor {
                index,
                pos,
                steps: [skip, s2, add_mod(s2, skip, m), add_mod(s2, s2, m)],
                inv_skip: 0,
                quota: quotas[rank],
                weight: b.weight,
            }
        })
        .collect();
    // At most 65534 weights below 2^32: no overflow.
    let total: u64 = cursors.iter().map(|c| u64::from(c.weight)).sum();
    let mut groups: Vec<Group> = Vec::new();
    for (i, c) in cursors.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if g.weight == c.weight => g.live += 1,
            _ => {
                let mut g = Group::new(c.weight, i, total);
                g.live = 1;
                groups.push(g);
            }
        }
    }
    debug_assert!(groups.iter().all(|g| {
        let q = &cursors[g.start..g.start + g.live];
        q.windows(2)
            .all(|w| w[0].quota >= w[1].quota && w[0].quota - w[1].quota <= 1)
    }));

    // Ticks in clock order through a calendar: groups wait in the bucket of their next tick (one
    // bucket per 2^shift slots, the last one catching anything later), and the few in one bucket
    // are put in exact order in a short sorted list. A single heap over all groups did the same but
    // spent more time sifting than the claims themselves when weights are many and distinct.
    //
    // About one tick per bucket: a bucket per slot costs more to set up and scan than the ticks
    // need when they are few (1000 backends of 100 weights tick ~6,600 times at M = 65537), and
    // wide buckets put several groups at a time through the list when ticks are many (100 backends
    // of ~60 weights tick ~45,000 times: 16-slot buckets made their build 30 % slower).
    let ticks: u64 = groups
        .iter()
        .map(|g| u64::from(cursors[g.start].quota))
        .sum();
    let shift = (u64::from(m) / ticks.max(1)).max(1).ilog2();
    let last = u64::from(m) >> shift;
    let mut heads = vec![NO_GROUP; (last + 1) as usize];
    // Which buckets hold a group: the scan jumps from one to the next by a bit search, where a
    // test per bucket was a branch taken at random when about half the buckets are empty.
    let mut occupied = vec![0u64; heads.len().div_ceil(64)];
    for (gi, g) in groups.iter_mut().enumerate() {
        // Lossless: at most 65534 groups; the bucket is clamped to `m`.
        let b = (g.bucket >> shift).min(last) as usize;
        g.next = heads[b];
        heads[b] = gi as u32;
        occupied[b >> 6] |= 1 << (b & 63);
    }
    let mut fill = Fill::new(m);
    // Latest first: the next tick is the last.
    let mut due: Vec<Tick> = Vec::new();
    let schedule = |due: &mut Vec<Tick>, t: Tick| {
        let at = due.partition_point(|d| *d > t);
        due.insert(at, t);
    };
    let mut word = 0;
    while word < occupied.len() {
        if occupied[word] == 0 {
            word += 1;
            continue;
        }
        // Lossless: a bit index.
        let b = word * 64 + occupied[word].trailing_zeros() as usize;
        occupied[word] &= occupied[word] - 1;
        let mut gi = std::mem::replace(&mut heads[b], NO_GROUP);
        while let Some(g) = groups.get(gi as usize) {
            let t = Tick {
                claims: g.claims,
                weight: g.weight,
                group: gi as usize,
            };
            schedule(&mut due, t);
            gi = g.next;
        }
        while let Some(tick) = due.pop() {
            let Some(g) = groups.get_mut(tick.group) else {
                continue;
            };
            let Some(members) = cursors.get_mut(g.start..g.start + g.live) else {
                continue;
            };
            fill.claim(members);
            g.claims += 1;
            // Those done are a suffix (see `Group::live`).
            let mut live = members.len();
            while live > 0 && members[live - 1].quota == g.claims {
                live -= 1;
            }
            g.live = live;
            g.advance();
            if live == 0 {
                continue;
            }
            let nb = (g.bucket >> shift).min(last) as usize;
            if nb == b {
                let t = Tick {
                    claims: g.claims,
                    ..tick
                };
                schedule(&mut due, t);
            } else {
                g.next = heads[nb];
                heads[nb] = tick.group as u32;
                occupied[nb >> 6] |= 1 << (nb & 63);
            }
        }
    }
    Ok(Maglev { slots: fill.slots })
}

/// The first 16 bytes of `key`, zero-padded, as a big-endian number: when two keys' prefixes
/// differ they order as the keys do (a shorter key pads with zeros, below any byte of the longer
/// key or equal to it, and then the full comparison decides).
fn key_prefix(key: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = key.len().min(16);
    b[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(b)
}

/// Exact slot counts per backend of `order` (largest-remainder rounding of `m * w / sum(w)`); they add
/// up to `m`, or are all 0 when every weight is 0. Ties between equal remainders go to the smaller
/// key, so the counts do not depend on the caller's order either.
fn quotas(backends: &[MaglevBackend], order: &[u16], m: u32) -> Vec<u32> {
    let weight = |i: u16| u64::from(backends[usize::from(i)].weight);
    // At most 65534 weights below 2^32: no overflow.
    let total: u64 = order.iter().map(|&i| weight(i)).sum();
    if total == 0 {
        return vec![0; order.len()];
    }
    let mut quotas = Vec::with_capacity(order.len());
    let mut remainders = Vec::with_capacity(order.len());
    for (rank, &i) in (0u64..).zip(order) {
        // m <= 2^31 and weight < 2^32: the product fits a u64, and the quotient is at most m.
        let exact = u64::from(m) * weight(i);
        quotas.push((exact / total) as u32);
        // Largest remainder first, then smallest rank, as one number: the remainder is below
        // `total` < 2^48 and the rank below 2^16.
        remainders.push((total - 1 - exact % total) << 16 | rank);
    }
    let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    // Remainders add up to `total * missing` and each is below `total`, so more than `missing`
    // backends have a non-zero remainder: a weight-0 backend never receives one of these slots.
    let missing = (u64::from(m) - given) as usize;
    if missing > 0 {
        // Only which ones get a slot matters, not their order.
        remainders.select_nth_unstable(missing - 1);
        for &r in &remainders[..missing] {
            // Lossless: the rank is below 2^16.
            quotas[(r & 0xffff) as usize] += 1;
        }
    }
    quotas
}

#[cfg(test)]
mod tests;
