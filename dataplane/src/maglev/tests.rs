use super::*;
use proptest::prelude::*;

/// Proptest cases per property: each builds one or two tables of 65537 slots, so a few dozen
/// keep the suite at a few seconds under the test profile.
const CASES: u32 = 24;

fn key(i: usize, salt: u16) -> Vec<u8> {
    format!(
        "198.{}.{}.{}:{}",
        18 + i / 62_500,
        i / 250 % 250,
        i % 250,
        salt
    )
    .into_bytes()
}

fn equal(n: usize, salt: u16) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            key: key(i, salt),
            weight: 1,
        })
        .collect()
}

fn weighted(weights: &[u32], salt: u16) -> Vec<MaglevBackend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| MaglevBackend {
            key: key(i, salt),
            weight,
        })
        .collect()
}

/// Slot -> backend key: what a flow actually sees, independent of slice indices.
fn keys<'a>(table: &Maglev, backends: &'a [MaglevBackend]) -> Vec<Option<&'a [u8]>> {
    table
        .slots()
        .iter()
        .map(|&s| (s != EMPTY).then(|| backends[usize::from(s)].key.as_slice()))
        .collect()
}

fn counts(table: &Maglev, n: usize) -> Vec<usize> {
    let mut c = vec![0usize; n];
    for &s in table.slots() {
        c[usize::from(s)] += 1;
    }
    c
}

/// Fraction of all slots whose backend key differs between two tables (the slots of a removed
/// or added backend included, so the ideal is exactly that backend's share).
///
/// Maglev moves a little more than the ideal: the freed slots are taken over in a chain of
/// displaced claims, mostly in the last round of population, when every backend claims its final
/// slot in a nearly full table. Measured at M = 65537 (150 removals per N): the extra is largest
/// around N = 400 (M/N ~ 160), mean 0.95% and worst 1.05% of the slots with equal weights, and
/// worst 1.27% when the removed backend has twice the average weight; it shrinks for smaller and
/// larger N and with a larger table. [`EXTRA`] is that worst case with a margin, so the tests
/// catch a regression (a plain weighted round-robin moved up to 5.6% at N = 10) without flaking.
const EXTRA: f64 = 0.0125;

fn moved(a: &[Option<&[u8]>], b: &[Option<&[u8]>]) -> f64 {
    let changed = a.iter().zip(b).filter(|(x, y)| x != y).count();
    changed as f64 / a.len() as f64
}

/// Keys of `backends` whose skip (as [`build`] derives it) another key of them has.
fn sharing_a_skip(backends: &[MaglevBackend]) -> Vec<&[u8]> {
    let skips: Vec<u32> = backends
        .iter()
        .map(|b| skip_of(&b.key, DEFAULT_TABLE_SIZE as u32))
        .collect();
    let mut sorted = skips.clone();
    sorted.sort_unstable();
    let shared =
        |s: &u32| sorted.partition_point(|x| x < s) + 1 < sorted.partition_point(|x| x <= s);
    backends
        .iter()
        .zip(&skips)
        .filter(|(_, s)| shared(s))
        .map(|(b, _)| b.key.as_slice())
        .collect()
}

/// [`moved`] without the slots a backend sharing its skip with another (of `backends`, the
/// larger set) held before or holds after, unless the backend removed or added held them:
/// Maglev's known extra (module docs), which [`EXTRA`] does not cover.
fn moved_but_shared_skips(
    a: &[Option<&[u8]>],
    b: &[Option<&[u8]>],
    backends: &[MaglevBackend],
    changed: &[u8],
) -> f64 {
    let shared = sharing_a_skip(backends);
    let explained = |k: &Option<&[u8]>| k.is_some_and(|k| k != changed && shared.contains(&k));
    let n = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y && !explained(x) && !explained(y))
        .count();
    n as f64 / a.len() as f64
}

/// Maglev's known extra, pinned: seven equal backends of which two keys hash to one skip (salt
/// 46735: 198.18.0.5 and .6, a set proptest found). The two walk one cycle of slots a few steps
/// apart, so removing any other backend also swaps about 5% of the slots between them: 24% moved
/// against a share of 14.3%. Every move past the removed backend's own slots is such a swap.
#[test]
fn two_backends_sharing_a_skip_swap_slots_when_the_set_changes() {
    let before = equal(7, 46735);
    let shared = sharing_a_skip(&before);
    assert_eq!(shared, [before[5].key.as_slice(), before[6].key.as_slice()]);
    let a = build(&before, DEFAULT_TABLE_SIZE).unwrap();
    let mut after = before.clone();
    let gone = after.remove(0);
    let b = build(&after, DEFAULT_TABLE_SIZE).unwrap();
    let (ka, kb) = (keys(&a, &before), keys(&b, &after));
    let f = moved(&ka, &kb);
    assert!(f > 0.2, "the pair's swaps: {f} of the slots moved");
    let rest = moved_but_shared_skips(&ka, &kb, &before, &gone.key);
    assert!(
        rest <= 1.0 / 7.0 + EXTRA,
        "without the pair's swaps {rest} moved"
    );
    let swaps = ka
        .iter()
        .zip(&kb)
        .filter(|(x, y)| {
            x != y
                && x.is_some_and(|x| shared.contains(&x))
                && y.is_some_and(|y| shared.contains(&y))
        })
        .count();
    assert!(
        swaps as f64 / ka.len() as f64 > 0.09,
        "{swaps} slots swapped between the pair"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    // Equal weights get `floor` or `ceil` of M/N slots, the best integers can do. That is within
    // 1% of M/N while M/N >= 100 (N <= 655 at the default size); above that a slot is more than
    // 1% of a share (65537/690 = 94.98 -> 94 is 1.03% short), so the bound is 1% or one slot.
    #[test]
    fn equal_weights_give_each_backend_its_share(n in 1usize..=1000, salt: u16) {
        let b = equal(n, salt);
        let t = build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let ideal = DEFAULT_TABLE_SIZE as f64 / n as f64;
        for (i, &c) in counts(&t, n).iter().enumerate() {
            prop_assert!(
                c == DEFAULT_TABLE_SIZE / n || c == DEFAULT_TABLE_SIZE.div_ceil(n),
                "backend {i} of {n} has {c} slots"
            );
            let tolerance = (0.01 * ideal).max(1.0);
            prop_assert!((c as f64 - ideal).abs() <= tolerance, "backend {i}: {c} vs {ideal}");
        }
    }

    // The bound is 1% of the exact share or one slot, whichever is larger: a backend whose exact
    // share is 3.4 slots must get 3 or 4, and neither is within 1% of 3.4. Integer slot counts
    // can only promise to be within one slot of the share; for shares above 100 slots that is
    // already tighter than 1%.
    #[test]
    fn weighted_shares_follow_weights(
        weights in proptest::collection::vec(1u32..=100, 1..=200),
        salt: u16,
    ) {
        let b = weighted(&weights, salt);
        let t = build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let total: u32 = weights.iter().sum();
        for (i, &c) in counts(&t, b.len()).iter().enumerate() {
            let exact = DEFAULT_TABLE_SIZE as f64 * f64::from(weights[i]) / f64::from(total);
            let tolerance = (0.01 * exact).max(1.0);
            prop_assert!(
                (c as f64 - exact).abs() <= tolerance,
                "backend {i} weight {} has {c} slots, exact share {exact}", weights[i]
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_slots(
        n in 2usize..=1000,
        victim in any::<prop::sample::Index>(),
        salt: u16,
    ) {
        let before = equal(n, salt);
        let mut after = before.clone();
        let gone = after.remove(victim.index(n));
        let a = build(&before, DEFAULT_TABLE_SIZE).unwrap();
        let b = build(&after, DEFAULT_TABLE_SIZE).unwrap();
        let f = moved_but_shared_skips(&keys(&a, &before), &keys(&b, &after), &before, &gone.key);
        prop_assert!(f <= 1.0 / n as f64 + EXTRA, "{n} -> {}: {f} of the slots moved", n - 1);
    }

    #[test]
    fn adding_a_backend_moves_little_more_than_its_slots(n in 1usize..=1000, salt: u16) {
        let after = equal(n + 1, salt);
        let before = after[..n].to_vec();
        let a = build(&before, DEFAULT_TABLE_SIZE).unwrap();
        let b = build(&after, DEFAULT_TABLE_SIZE).unwrap();
        let f = moved_but_shared_skips(&keys(&a, &before), &keys(&b, &after), &after, &after[n].key);
        prop_assert!(f <= 1.0 / (n + 1) as f64 + EXTRA, "{n} -> {}: {f} of the slots moved", n + 1);
    }

    #[test]
    fn removing_a_weighted_backend_moves_little_more_than_its_share(
        weights in proptest::collection::vec(1u32..=100, 2..=200),
        victim in any::<prop::sample::Index>(),
        salt: u16,
    ) {
        let before = weighted(&weights, salt);
        let mut after = before.clone();
        let gone = after.remove(victim.index(before.len()));
        let share = f64::from(gone.weight) / f64::from(weights.iter().sum::<u32>());
        let a = build(&before, DEFAULT_TABLE_SIZE).unwrap();
        let b = build(&after, DEFAULT_TABLE_SIZE).unwrap();
        let f = moved_but_shared_skips(&keys(&a, &before), &keys(&b, &after), &before, &gone.key);
        prop_assert!(f <= share + 1.2 * EXTRA, "{f} of the slots moved for a share of {share}");
    }

    #[test]
    fn input_order_does_not_change_the_mapping(
        (b, shuffled) in proptest::collection::vec(0u32..=100, 1..=300)
            .prop_map(|w| weighted(&w, 7))
            .prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
    ) {
        let a = build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let s = build(&shuffled, DEFAULT_TABLE_SIZE).unwrap();
        prop_assert_eq!(keys(&a, &b), keys(&s, &shuffled));
    }
}

#[test]
fn weight_zero_backend_gets_nothing_and_changes_nothing() {
    let mut with = weighted(&[3, 0, 5, 1, 0, 2], 1);
    let a = build(&with, DEFAULT_TABLE_SIZE).unwrap();
    let c = counts(&a, with.len());
    assert_eq!((c[1], c[4]), (0, 0), "weight-0 backends got slots: {c:?}");
    // Draining a backend (weight 0) must look exactly like removing it to every other flow.
    with.retain(|b| b.weight > 0);
    let b = build(&with, DEFAULT_TABLE_SIZE).unwrap();
    let with_all = weighted(&[3, 0, 5, 1, 0, 2], 1);
    assert_eq!(keys(&a, &with_all), keys(&b, &with));
}

#[test]
fn no_weighted_backend_means_no_lookup() {
    for b in [vec![], weighted(&[0, 0, 0], 2)] {
        let t = build(&b, DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(t.slots().len(), DEFAULT_TABLE_SIZE);
        assert!(t.slots().iter().all(|&s| s == EMPTY));
        for h in [0, 1, 65_536, u64::MAX] {
            assert_eq!(t.lookup(h), None, "{} backends, hash {h}", b.len());
        }
    }
}

#[test]
fn sizes_must_be_primes_between_3_and_2_pow_31() {
    for size in [0, 1, 2, 4, 9, 15, 65_535, 65_536, 1 << 31, 4_294_967_291] {
        assert_eq!(build(&equal(1, 0), size), Err(MaglevError::NotPrime(size)));
    }
    for size in [3, 5, 251, 65_537, 131_071] {
        let t = build(&equal(3, 0), size).unwrap();
        assert_eq!(t.slots().len(), size);
        assert!(t.slots().iter().all(|&s| s < 3), "size {size}");
    }
    assert!(is_valid_table_size(2_147_483_647));
    assert!(!is_valid_table_size(2_147_483_649));
}

#[test]
fn duplicate_keys_are_rejected() {
    let mut b = weighted(&[1, 2, 0], 3);
    b[2].key = b[0].key.clone();
    assert_eq!(
        build(&b, DEFAULT_TABLE_SIZE),
        Err(MaglevError::DuplicateKey)
    );
}

#[test]
fn too_many_backends_are_rejected() {
    assert_eq!(
        build(&equal(4, 0), 3),
        Err(MaglevError::TooManyBackends {
            backends: 4,
            size: 3
        })
    );
    let n = usize::from(u16::MAX);
    assert_eq!(
        build(&equal(n, 0), DEFAULT_TABLE_SIZE),
        Err(MaglevError::TooManyBackends {
            backends: n,
            size: DEFAULT_TABLE_SIZE
        })
    );
    // The largest set the indices allow still builds, one slot or so each.
    let t = build(&equal(n - 1, 0), DEFAULT_TABLE_SIZE).unwrap();
    assert!(counts(&t, n - 1).iter().all(|&c| (1..=2).contains(&c)));
}

#[test]
fn lookup_spreads_flow_hashes_by_weight() {
    let weights = [1, 2, 3, 4];
    let t = build(&weighted(&weights, 4), DEFAULT_TABLE_SIZE).unwrap();
    let flows = 200_000u64;
    let mut hits = [0u64; 4];
    for i in 0..flows {
        let h = hash_bytes(&i.to_le_bytes(), 42);
        let b = t.lookup(h).unwrap();
        assert_eq!(
            usize::from(b),
            usize::from(t.slots()[(h % DEFAULT_TABLE_SIZE as u64) as usize])
        );
        hits[usize::from(b)] += 1;
    }
    for (i, &w) in weights.iter().enumerate() {
        let expected = flows as f64 * f64::from(w) / 10.0;
        let got = hits[i] as f64;
        // Binomial spread at 200k flows is well under 1%; 3% leaves room without hiding a skew.
        assert!(
            (got - expected).abs() <= 0.03 * expected,
            "backend {i}: {got} vs {expected}"
        );
    }
}

/// The same algorithm written the slow, obvious way: every claim of every backend sorted by its
/// clock time (ties: lighter weight, then smaller key), each walking its permutation one probe at
/// a time. `build`'s calendar, weight groups, four-wide probes and end-game list must not change
/// a single slot.
fn reference(backends: &[MaglevBackend], m: u32) -> Vec<Option<Vec<u8>>> {
    let mut live: Vec<&MaglevBackend> = backends.iter().collect();
    live.sort_by(|a, b| a.key.cmp(&b.key));
    let order: Vec<u16> = (0..live.len() as u16).collect();
    let owned: Vec<MaglevBackend> = live.iter().map(|b| (*b).clone()).collect();
    let q = quotas(&owned, &order, m);
    let mut events = Vec::new();
    for (rank, b) in owned.iter().enumerate() {
        for k in 0..q[rank] {
            events.push((2 * u64::from(k) + 1, u64::from(b.weight), rank));
        }
    }
    events.sort_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let m64 = u64::from(m);
    let mut next: Vec<u64> = owned
        .iter()
        .map(|b| hash_bytes(&b.key, OFFSET_SEED) % m64)
        .collect();
    let skip: Vec<u64> = owned
        .iter()
        .map(|b| hash_bytes(&b.key, SKIP_SEED) % (m64 - 1) + 1)
        .collect();
    let mut table: Vec<Option<Vec<u8>>> = vec![None; m as usize];
    for (_, _, rank) in events {
        let mut pos = next[rank];
        while table[pos as usize].is_some() {
            pos = (pos + skip[rank]) % m64;
        }
        table[pos as usize] = Some(owned[rank].key.clone());
        next[rank] = (pos + skip[rank]) % m64;
    }
    table
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn build_matches_the_reference_model(
        // Small weights make ties between weights common (1/1 = 3/3), small tables make the
        // end game a large part of the fill.
        weights in proptest::collection::vec(0u32..=12, 0..=60),
        size in prop::sample::select(vec![61usize, 251, 1009, 4099, 65_537]),
        salt: u16,
    ) {
        prop_assume!(weights.len() <= size);
        let b = weighted(&weights, salt);
        let t = build(&b, size).unwrap();
        let got: Vec<Option<Vec<u8>>> =
            keys(&t, &b).into_iter().map(|k| k.map(<[u8]>::to_vec)).collect();
        prop_assert_eq!(got, reference(&b, size as u32));
    }
}

/// Keys are sorted by a 16-byte prefix first: keys that share it, keys that are prefixes of one
/// another and keys with zero bytes (which the prefix pads with) must still sort as the bytes do.
#[test]
fn keys_sharing_long_prefixes_sort_as_bytes() {
    let mut names: Vec<Vec<u8>> = vec![
        b"ab".to_vec(),
        b"ab\0".to_vec(),
        b"ab\0\0".to_vec(),
        b"a".to_vec(),
        vec![],
        vec![0],
        b"0123456789abcdef".to_vec(),
        b"0123456789abcdef\0".to_vec(),
        b"0123456789abcdefA".to_vec(),
        b"0123456789abcdef@".to_vec(),
        b"0123456789abcde".to_vec(),
        b"0123456789abcdf".to_vec(),
    ];
    for i in 0..40u32 {
        names.push(format!("[2001:db8::{i}]:8080-long-enough").into_bytes());
        names.push(format!("[2001:db8::{i}]:8080").into_bytes());
    }
    let b: Vec<MaglevBackend> = names
        .into_iter()
        .enumerate()
        .map(|(i, key)| MaglevBackend {
            key,
            weight: 1 + (i % 3) as u32,
        })
        .collect();
    for size in [251, 4099, DEFAULT_TABLE_SIZE] {
        let t = build(&b, size).unwrap();
        let got: Vec<Option<Vec<u8>>> = keys(&t, &b)
            .into_iter()
            .map(|k| k.map(<[u8]>::to_vec))
            .collect();
        assert_eq!(got, reference(&b, size as u32), "size {size}");
    }
    let mut dup = b.clone();
    dup[1].key = b"0123456789abcdefA".to_vec();
    assert_eq!(
        build(&dup, DEFAULT_TABLE_SIZE),
        Err(MaglevError::DuplicateKey)
    );
}

/// Many members per weight (wide calendar buckets, the end game reached mid-tick) and many
/// distinct weights (narrow buckets, several groups due in one bucket) against the reference.
#[test]
fn large_sets_match_the_reference_model() {
    let lcg = |n: usize, modulo: u32| -> Vec<u32> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) as u32 % modulo + 1
            })
            .collect()
    };
    for (weights, size) in [
        (vec![1; 1000], DEFAULT_TABLE_SIZE),
        (lcg(1000, 3), DEFAULT_TABLE_SIZE),
        (lcg(1000, 100), DEFAULT_TABLE_SIZE),
        (lcg(100, 100), DEFAULT_TABLE_SIZE),
        (lcg(300, 1000), 4099),
    ] {
        let b = weighted(&weights, 9);
        let t = build(&b, size).unwrap();
        let got: Vec<Option<Vec<u8>>> = keys(&t, &b)
            .into_iter()
            .map(|k| k.map(<[u8]>::to_vec))
            .collect();
        assert!(
            got == reference(&b, size as u32),
            "{} backends, size {size}",
            b.len()
        );
    }
}
