//! Which digests the `summaries` family may hold, kept in memory: a digest it does not
//! hold is answered without RocksDB.
//!
//! Most digests a member checks or imports are not stored. RocksDB answers such a miss
//! through its per-file bloom filters, but only after picking the files of every level
//! and probing each: about a microsecond a digest (an import of 10,000,000 spent 8.7 of
//! its 23 s there). One blocked bloom filter over every stored digest answers it with one
//! cache line.
//!
//! The invariant: every key the family holds is in the filter, once it is ready. Rows
//! come into the family only through `Batch::put`, a write set's apply, an ingested file
//! of `write_summaries_file`, a snapshot's install and, before anyone reads, the store's
//! own recovery at open; each of the first four notes its digests before the rows are
//! written, and the scan (`Store::scan_presence`) covers what was there before. Deleted
//! digests stay in the filter (a false positive costs one RocksDB read) until the next
//! open, or a full compaction (`Store::compact_all`), rebuilds it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

/// Bits per digest a filter is sized for: about 0.1% false positives with `PROBES` (at
/// 10 bits, 1%: a full store has three or four filters, each adding its share, and each
/// false positive is a RocksDB read through every level-0 file).
const BITS_PER_DIGEST: usize = 16;
/// Bits set per digest, all in one 512-bit block (one cache line).
const PROBES: u32 = 8;
/// The first filter's capacity when the store's estimate is smaller.
const MIN_CAPACITY: usize = 1 << 20;

/// One blocked bloom filter of a fixed capacity.
struct Filter {
    /// 512-bit blocks, eight words each.
    words: Box<[AtomicU64]>,
    n_blocks: u64,
    capacity: usize,
    len: AtomicUsize,
}

impl Filter {
    fn new(capacity: usize) -> Filter {
        let n_blocks = (capacity * BITS_PER_DIGEST).div_ceil(512).max(1);
        Filter {
            words: (0..n_blocks * 8).map(|_| AtomicU64::new(0)).collect(),
            n_blocks: n_blocks as u64,
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    /// The block's first word and the `PROBES` bit positions (0..512) of a hashed digest.
    fn place(&self, hash: (u64, u64)) -> (usize, [u32; PROBES as usize]) {
        let block = ((u128::from(hash.0) * u128::from(self.n_blocks)) >> 64) as usize;
        let mut bits = [0u32; PROBES as usize];
        // Nine bits a probe: seven from the second word, the eighth from the first word's
        // low bits (the block is chosen by its high ones).
        for (probe, bit) in (0..PROBES).zip(&mut bits) {
            let word = if probe < 7 { hash.1 >> (probe * 9) } else { hash.0 };
            *bit = (word & 511) as u32;
        }
        (block * 8, bits)
    }

    fn insert(&self, hash: (u64, u64)) {
        let (first, bits) = self.place(hash);
        let mut masks = [0u64; 8];
        for bit in bits {
            masks[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (word, mask) in self.words[first..first + 8].iter().zip(masks) {
            // Release: a reader that sees a row written after this note sees the note.
            if mask != 0 && word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::Release);
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Without a branch per bit: the probes of several filters and digests overlap in
    /// the CPU instead of waiting for each other's cache misses.
    fn may_contain(&self, hash: (u64, u64)) -> bool {
        let (first, bits) = self.place(hash);
        let mut masks = [0u64; 8];
        for bit in bits {
            masks[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        let mut missing = 0;
        for (word, mask) in self.words[first..first + 8].iter().zip(masks) {
            missing |= mask & !word.load(Ordering::Acquire);
        }
        missing == 0
    }

    fn is_full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= self.capacity
    }
}

/// Filters of growing capacity: a digest is noted in the newest, looked for in all. A
/// lookup costs a cache miss per filter, so the older ones are folded into the newest
/// (`Store::fold_presence`) once nothing is being loaded.
pub struct Presence {
    filters: RwLock<Vec<Filter>>,
    /// Notes whose rows may not be written yet, by the parity of the epoch their `Noting`
    /// began in: a fold waits for those begun before its filter was the newest.
    noting: std::sync::Arc<[AtomicUsize; 2]>,
    epoch: AtomicUsize,
    /// Set once a scan has noted every digest stored before it began; until then every
    /// digest may be present.
    ready: AtomicBool,
    /// Counts resets: a scan begun before the last one must not make the filter ready.
    generation: AtomicU64,
    /// Random per process: digests are chosen by callers, and a caller who could aim many
    /// at one block would only raise its false positives, but need not be able to.
    seed: [u64; 3],
    /// Sets of digests noted ahead (`note_ahead`), by their hash, with the generation
    /// they were noted in; the oldest go first past `AHEAD_KEPT`.
    ahead: parking_lot::Mutex<std::collections::VecDeque<([u8; 32], u64)>>,
}

/// Sets noted ahead that are remembered at most: one per import block in flight, and a
/// few left by blocks whose commit failed.
const AHEAD_KEPT: usize = 16;

impl Presence {
    pub fn new() -> Presence {
        use std::hash::BuildHasher as _;
        // std's hasher keys are random per process (and never fail to be made).
        let random = std::collections::hash_map::RandomState::new();
        let seed = [0u8, 1, 2].map(|n| random.hash_one(n));
        Presence {
            filters: RwLock::new(Vec::new()),
            noting: std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
            epoch: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            seed,
            ahead: parking_lot::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Remembers that the digests whose concatenation hashes to `hash` are noted: a
    /// replicated import block's, noted as its leader builds its files, so that applying
    /// the block here need not note them again (`noted_ahead`).
    pub fn note_ahead(&self, hash: [u8; 32]) {
        let mut ahead = self.ahead.lock();
        if ahead.len() == AHEAD_KEPT {
            ahead.pop_front();
        }
        ahead.push_back((hash, self.generation()));
    }

    /// Whether the set hashing to `hash` was noted ahead in this filter's generation (a
    /// reset since forgot it); forgets it either way.
    pub fn noted_ahead(&self, hash: &[u8; 32]) -> bool {
        let mut ahead = self.ahead.lock();
        match ahead.iter().position(|(noted, _)| noted == hash) {
            Some(at) => ahead
                .remove(at)
                .is_some_and(|(_, generation)| generation == self.generation()),
            None => false,
        }
    }

    fn hash(&self, key: &[u8]) -> (u64, u64) {
        let word = |at: usize| {
            key.get(at..at + 8)
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        // Keys shorter than a digest (none are) still hash, on their length too.
        let (a, b, c, d) = (word(0), word(8), word(16) ^ key.len() as u64, word(24));
        let first = mix(a ^ self.seed[0], b ^ self.seed[1]);
        (first, mix(first ^ c, d ^ self.seed[2]))
    }

    /// Notes that `key` is about to be stored. Called before the row is written.
    pub fn note(&self, key: &[u8]) {
        self.note_all([key]);
    }

    /// Notes each of `keys`, as `note` does, under one lock while the newest filter has
    /// room.
    pub fn note_all<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            {
                let filters = self.filters.read();
                if let Some(last) = filters.last() {
                    while !last.is_full()
                        && let Some(key) = keys.next()
                    {
                        last.insert(self.hash(key));
                    }
                }
            }
            if keys.peek().is_none() {
                return;
            }
            let mut filters = self.filters.write();
            if filters.last().is_none_or(Filter::is_full) {
                // Each new filter holds twice what all before it do: few filters to probe.
                let held: usize = filters.iter().map(|filter| filter.capacity).sum();
                filters.push(Filter::new(held.saturating_mul(2).max(MIN_CAPACITY)));
            }
        }
    }

    /// Held from before a digest is noted until its row is written (or given up).
    pub fn noting(&self) -> Noting {
        loop {
            let parity = self.epoch.load(Ordering::Acquire) & 1;
            self.noting[parity].fetch_add(1, Ordering::AcqRel);
            if self.epoch.load(Ordering::Acquire) & 1 == parity {
                return Noting {
                    counts: self.noting.clone(),
                    parity,
                };
            }
            // The epoch turned meanwhile: counted in the new one instead.
            self.noting[parity].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// How many filters a lookup probes.
    pub fn n_filters(&self) -> usize {
        self.filters.read().len()
    }

    /// The first half of a fold: when there are filters before the newest, returns the
    /// newest's index and the generation once every note begun before now has its row
    /// written, so that a scan starting then finds every digest the older filters hold
    /// (later notes go to the newest filter or one after it). None: nothing to fold.
    pub fn fold_start(&self, stop: &AtomicBool) -> Option<(usize, u64)> {
        let (newest, generation) = {
            let filters = self.filters.read();
            if filters.len() < 2 || !self.is_ready() {
                return None;
            }
            (filters.len() - 1, self.generation())
        };
        let before = self.epoch.fetch_add(1, Ordering::AcqRel) & 1;
        while self.noting[before].load(Ordering::Acquire) > 0 {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            // The fold's own thread (never a runtime worker); commits take milliseconds.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Some((newest, generation))
    }

    /// The second half: the scan noted every stored digest, so the filters before
    /// `newest` go, unless a reset came since.
    pub fn fold_finish(&self, newest: usize, generation: u64) -> bool {
        let mut filters = self.filters.write();
        if self.generation.load(Ordering::Acquire) != generation || filters.len() <= newest {
            return false;
        }
        filters.drain(..newest);
        true
    }

    /// False only when `key` is certainly not stored.
    #[cfg(test)]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let hash = self.hash(key);
        Self::in_any(&self.filters.read(), hash)
    }

    /// Those of `keys` that may be stored (all until the filter is ready), in their order.
    pub fn retain_maybe<'k, K: AsRef<[u8]>>(&self, keys: &'k [K]) -> Vec<&'k K> {
        if !self.ready.load(Ordering::Acquire) {
            return keys.iter().collect();
        }
        let filters = self.filters.read();
        keys.iter()
            .filter(|key| Self::in_any(&filters, self.hash(key.as_ref())))
            .collect()
    }

    /// Every filter probed, none skipped on an answer: a digest not stored (the common
    /// case) is probed in all of them anyway, and this way the probes overlap.
    fn in_any(filters: &[Filter], hash: (u64, u64)) -> bool {
        filters
            .iter()
            .fold(false, |found, filter| found | filter.may_contain(hash))
    }

    /// Forgets every digest and sizes the first filter for `expected`; not ready until
    /// the scan that follows says so.
    /// the scan that follows says so. Returns the generation that scan names.
    pub fn reset(&self, expected: usize) -> u64 {
        let capacity = expected.saturating_add(expected / 2).max(MIN_CAPACITY);
        let mut filters = self.filters.write();
        self.ready.store(false, Ordering::Release);
        *filters = vec![Filter::new(capacity)];
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The generation a scan starting now names.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A scan noted every digest stored before it began: ready, unless the filter was
    /// reset since (`generation` is the scan's).
    pub fn set_ready(&self, generation: u64) {
        let _filters = self.filters.write();
        if self.generation.load(Ordering::Acquire) == generation {
            self.ready.store(true, Ordering::Release);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Bytes the filters hold.
    pub fn heap_bytes(&self) -> usize {
        self.filters.read().iter().map(|filter| filter.words.len() * 8).sum()
    }
}

/// A note whose row is not written yet (`Presence::noting`).
pub struct Noting {
    counts: std::sync::Arc<[AtomicUsize; 2]>,
    parity: usize,
}

impl Drop for Noting {
    fn drop(&mut self) {
        self.counts[self.parity].fetch_sub(1, Ordering::AcqRel);
    }
}

/// Folded 128-bit product: every input bit reaches every output bit.
fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b | 1);
    (product as u64) ^ ((product >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> [u8; 32] {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    #[test]
    fn a_noted_digest_is_always_found_and_few_others_are() {
        let presence = Presence::new();
        let generation = presence.reset(0);
        presence.set_ready(generation);
        // Past the first filter's capacity, so a second and third are added.
        let n = 3 * MIN_CAPACITY as u64;
        for i in 0..n {
            presence.note(&key(i));
        }
        assert!(presence.filters.read().len() >= 2, "the filters grew");
        assert!((0..n).all(|i| presence.may_contain(&key(i))), "no false negative");
        let keys: Vec<[u8; 32]> = (n - 1000..n + 1000).map(key).collect();
        let maybe = presence.retain_maybe(&keys);
        assert!(
            keys[..1000].iter().all(|noted| maybe.contains(&noted)),
            "no false negative in a batch"
        );
        assert!(maybe.len() < 1010, "{} of 1000 others kept", maybe.len() - 1000);
        assert!(
            maybe.is_sorted_by_key(|kept| keys.iter().position(|key| key == *kept)),
            "in their order"
        );
        let n_others = 100_000;
        let false_positives = (n..n + n_others).filter(|i| presence.may_contain(&key(*i))).count();
        // About 0.1% per full filter (0.18% measured over three filters).
        assert!(
            false_positives < n_others as usize * 4 / 1000,
            "{false_positives} false positives in {n_others}"
        );
    }

    #[test]
    fn until_ready_every_digest_may_be_present() {
        let presence = Presence::new();
        let generation = presence.reset(10);
        assert!(presence.may_contain(&key(1)));
        assert_eq!(presence.retain_maybe(&[key(1), key(2)]).len(), 2);
        presence.set_ready(generation);
        assert!(!presence.may_contain(&key(1)), "an empty filter holds nothing");
        assert!(presence.retain_maybe(&[key(1), key(2)]).is_empty());
        let scan_begun = presence.generation();
        let generation = presence.reset(10);
        assert!(presence.may_contain(&key(1)), "a reset is not ready");
        presence.set_ready(scan_begun);
        assert!(
            presence.may_contain(&key(1)),
            "a scan begun before a reset does not make it ready"
        );
        presence.set_ready(generation);
        assert!(!presence.may_contain(&key(1)));
    }
}
