//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI'16).
//!
//! CONTRACT (skeleton, to be implemented).

/// Default lookup table size: a prime, so every permutation visits every slot.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// One backend as Maglev sees it: a stable identity and a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Builds the table for `backends` with `size` slots. Pure and deterministic.
pub fn build(backends: &[MaglevBackend], size: usize) -> Result<Maglev, MaglevError> {
    let _ = backends;
    Ok(Maglev {
        slots: vec![EMPTY; size].into_boxed_slice(),
    })
}
