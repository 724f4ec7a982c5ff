//! Which experts' current weights already sit in a rank's redundant slots: a hint that lets the
//! planner put a replica where no copy is needed, when that costs no balance.

/// The experts held, with current weights, by every rank's redundant slots (one layer's view).
///
/// Every rank must build the same residency (it comes from the same sequence of plans), so the
/// planner stays deterministic across ranks.
///
/// ```
/// use ultraep_plan::Residency;
/// let mut residency = Residency::new(4, 2);
/// residency.set(3, 1, Some(17));
/// assert!(residency.holds(3, 17));
/// assert!(!residency.holds(2, 17));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Residency {
    slots_per_rank: usize,
    /// `experts[rank * slots_per_rank + slot]`, [`Residency::EMPTY`] for none.
    experts: Vec<u32>,
}

impl Residency {
    const EMPTY: u32 = u32::MAX;

    /// Nothing resident on `ranks` ranks of `slots_per_rank` slots.
    pub fn new(ranks: u32, slots_per_rank: u32) -> Self {
        Self {
            slots_per_rank: slots_per_rank as usize,
            experts: vec![Self::EMPTY; ranks as usize * slots_per_rank as usize],
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.experts.fill(Self::EMPTY);
    }

    /// Records that slot `slot` of `rank` holds `expert` (or nothing); out-of-range slots are
    /// ignored.
    pub fn set(&mut self, rank: u32, slot: u32, expert: Option<u32>) {
        if slot as usize >= self.slots_per_rank {
            return;
        }
        let index = rank as usize * self.slots_per_rank + slot as usize;
        if let Some(entry) = self.experts.get_mut(index) {
            *entry = expert.unwrap_or(Self::EMPTY);
        }
    }

    /// Whether a slot of `rank` holds `expert`.
    pub fn holds(&self, rank: u32, expert: u32) -> bool {
        let start = rank as usize * self.slots_per_rank;
        self.experts
            .get(start..start + self.slots_per_rank)
            .is_some_and(|slots| slots.contains(&expert))
    }

    /// Whether this residency describes `ranks` ranks of `slots_per_rank` slots.
    pub fn fits(&self, ranks: u32, slots_per_rank: u32) -> bool {
        self.slots_per_rank == slots_per_rank as usize
            && self.experts.len() == ranks as usize * slots_per_rank as usize
    }

    /// Whether no slot holds anything.
    pub fn is_empty(&self) -> bool {
        self.experts.iter().all(|&expert| expert == Self::EMPTY)
    }
}
