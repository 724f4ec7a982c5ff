//! Where every expert lives: its home (master) rank, and the domains of the ranks.

use crate::PlanError;

/// The home rank of every expert. Masters never move; replicas are extra copies elsewhere.
///
/// ```
/// use ultraep_plan::ExpertLayout;
/// let layout = ExpertLayout::contiguous(4, 2)?; // 8 experts, 2 per rank
/// assert_eq!(layout.home(5), 2);
/// let uneven = ExpertLayout::balanced_blocks(3, 8)?; // 3, 3 and 2 experts
/// assert_eq!(uneven.homes(), &[0, 0, 0, 1, 1, 1, 2, 2]);
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertLayout {
    num_ranks: u32,
    homes: Vec<u32>,
}

impl ExpertLayout {
    /// `experts_per_rank` experts on each of `num_ranks` ranks, in contiguous blocks: rank r owns
    /// experts `r * experts_per_rank ..`.
    pub fn contiguous(num_ranks: u32, experts_per_rank: u32) -> Result<Self, PlanError> {
        if experts_per_rank == 0 {
            return Err(PlanError::NoExpertsPerRank);
        }
        check_size(
            "the expert table",
            u64::from(num_ranks) * u64::from(experts_per_rank),
            u64::from(MAX_EXPERTS),
        )?;
        let homes = (0..num_ranks)
            .flat_map(|rank| std::iter::repeat_n(rank, experts_per_rank as usize))
            .collect();
        Self::from_homes(num_ranks, homes)
    }

    /// `num_experts` experts in contiguous blocks whose sizes differ by at most one, larger blocks
    /// first (e.g. 256 experts on 72 ranks).
    pub fn balanced_blocks(num_ranks: u32, num_experts: u32) -> Result<Self, PlanError> {
        if num_ranks == 0 {
            return Err(PlanError::NoRanks);
        }
        check_size(
            "the expert table",
            u64::from(num_experts),
            u64::from(MAX_EXPERTS),
        )?;
        let base = num_experts / num_ranks;
        let larger = num_experts % num_ranks;
        let homes = (0..num_ranks)
            .flat_map(|rank| std::iter::repeat_n(rank, (base + u32::from(rank < larger)) as usize))
            .collect();
        Self::from_homes(num_ranks, homes)
    }

    /// An explicit home for every expert.
    pub fn from_homes(num_ranks: u32, homes: Vec<u32>) -> Result<Self, PlanError> {
        if num_ranks == 0 {
            return Err(PlanError::NoRanks);
        }
        check_size("the rank table", u64::from(num_ranks), u64::from(MAX_RANKS))?;
        check_size(
            "the expert table",
            homes.len() as u64,
            u64::from(MAX_EXPERTS),
        )?;
        if homes.is_empty() {
            return Err(PlanError::NoExperts);
        }
        if let Some((expert, &home)) = homes
            .iter()
            .enumerate()
            .find(|(_, home)| **home >= num_ranks)
        {
            return Err(PlanError::HomeOutOfRange {
                expert: expert as u32,
                home,
                num_ranks,
            });
        }
        Ok(Self { num_ranks, homes })
    }

    /// Ranks of the expert-parallel group.
    pub fn num_ranks(&self) -> u32 {
        self.num_ranks
    }

    /// Experts of the layer.
    pub fn num_experts(&self) -> u32 {
        self.homes.len() as u32
    }

    /// The home rank of `expert`.
    ///
    /// # Panics
    /// If `expert` is out of range, like slice indexing.
    pub fn home(&self, expert: u32) -> u32 {
        self.homes[expert as usize]
    }

    /// The home rank of every expert.
    pub fn homes(&self) -> &[u32] {
        &self.homes
    }

    /// The index of every expert among the experts of its home rank (by ascending expert), and
    /// how many experts every rank holds: where each master sits in its rank's expert memory.
    ///
    /// ```
    /// let layout = ultraep_plan::ExpertLayout::from_homes(2, vec![1, 0, 1, 1])?;
    /// assert_eq!(layout.home_indices(), (vec![0, 0, 1, 2], vec![1, 3]));
    /// # Ok::<(), ultraep_plan::PlanError>(())
    /// ```
    pub fn home_indices(&self) -> (Vec<u32>, Vec<u32>) {
        let mut per_rank = vec![0u32; self.num_ranks as usize];
        let indices = self
            .homes
            .iter()
            .map(|&home| {
                let index = per_rank[home as usize];
                per_rank[home as usize] += 1;
                index
            })
            .collect();
        (indices, per_rank)
    }
}

/// The scale-up domain of every rank. Replicas stay in their master's domain.
///
/// Domain labels may be any numbers; they are renumbered densely in order of first appearance, so
/// `[7, 7, 3, 3]` and `[0, 0, 1, 1]` describe the same machine.
///
/// ```
/// use ultraep_plan::RankDomains;
/// let domains = RankDomains::uniform(8, 4)?;
/// assert_eq!(domains.domain_of(5), 1);
/// assert_eq!(domains.ranks_of(1), &[4, 5, 6, 7]);
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankDomains {
    rank_domain: Vec<u32>,
    /// The ranks of every domain, concatenated; domain d owns `ranks[offsets[d]..offsets[d + 1]]`.
    ranks: Vec<u32>,
    offsets: Vec<u32>,
}

impl RankDomains {
    /// One domain holding every rank.
    pub fn single(num_ranks: u32) -> Result<Self, PlanError> {
        check_size("the rank table", u64::from(num_ranks), u64::from(MAX_RANKS))?;
        Self::from_labels(vec![0; num_ranks as usize])
    }

    /// Domains of `domain_size` consecutive ranks.
    pub fn uniform(num_ranks: u32, domain_size: u32) -> Result<Self, PlanError> {
        if domain_size == 0 || !num_ranks.is_multiple_of(domain_size) {
            return Err(PlanError::DomainSizeMismatch {
                domain_size,
                num_ranks,
            });
        }
        check_size("the rank table", u64::from(num_ranks), u64::from(MAX_RANKS))?;
        Self::from_labels((0..num_ranks).map(|rank| rank / domain_size).collect())
    }

    /// The domain label of every rank, e.g. from `ultraep_topo::Topology::rank_domains`.
    pub fn from_labels(labels: Vec<u32>) -> Result<Self, PlanError> {
        if labels.is_empty() {
            return Err(PlanError::NoRanks);
        }
        if labels.len() as u64 > u64::from(MAX_RANKS) {
            return Err(PlanError::TooLarge {
                what: "the rank table",
                size: labels.len() as u64,
                max: u64::from(MAX_RANKS),
            });
        }
        // Renumber in order of first appearance, through a map: a label per rank stays n log n.
        let mut seen: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
        let rank_domain: Vec<u32> = labels
            .iter()
            .map(|&label| {
                let next = seen.len() as u32;
                *seen.entry(label).or_insert(next)
            })
            .collect();
        let mut offsets = vec![0u32; seen.len() + 1];
        for &domain in &rank_domain {
            offsets[domain as usize + 1] += 1;
        }
        for index in 1..offsets.len() {
            offsets[index] += offsets[index - 1];
        }
        let mut fill = offsets.clone();
        let mut ranks = vec![0u32; rank_domain.len()];
        for (rank, &domain) in rank_domain.iter().enumerate() {
            ranks[fill[domain as usize] as usize] = rank as u32;
            fill[domain as usize] += 1;
        }
        Ok(Self {
            rank_domain,
            ranks,
            offsets,
        })
    }

    /// Ranks covered.
    pub fn num_ranks(&self) -> u32 {
        self.rank_domain.len() as u32
    }

    /// Domains.
    pub fn num_domains(&self) -> u32 {
        self.offsets.len() as u32 - 1
    }

    /// The domain of `rank` (dense numbering).
    ///
    /// # Panics
    /// If `rank` is out of range, like slice indexing.
    pub fn domain_of(&self, rank: u32) -> u32 {
        self.rank_domain[rank as usize]
    }

    /// The ranks of `domain` in ascending order.
    ///
    /// # Panics
    /// If `domain` is out of range, like slice indexing.
    pub fn ranks_of(&self, domain: u32) -> &[u32] {
        let domain = domain as usize;
        &self.ranks[self.offsets[domain] as usize..self.offsets[domain + 1] as usize]
    }
}

/// The most ranks a rank table may hold: 2^24, far beyond any machine (eight NVL72 racks are 576).
pub const MAX_RANKS: u32 = 1 << 24;

/// The most experts a layout may hold: 2^24 (published models have 128 to 2,304 per layer).
pub const MAX_EXPERTS: u32 = 1 << 24;

/// Refuses a table of `size` entries above `max`, before it is allocated.
fn check_size(what: &'static str, size: u64, max: u64) -> Result<(), PlanError> {
    if size > max {
        return Err(PlanError::TooLarge { what, size, max });
    }
    Ok(())
}
