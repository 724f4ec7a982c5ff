//! The topology itself and its queries.

use crate::{Accelerator, DomainId, LinkClass, LinkPath, Nanos, RankId, RankLinks, TopoError};

/// One scale-up domain: a set of ranks on one NVLink fabric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    pub(crate) name: String,
    pub(crate) ranks: Vec<RankId>,
    pub(crate) links: RankLinks,
}

impl Domain {
    /// The domain's name, e.g. "rack0".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its ranks in ascending order.
    pub fn ranks(&self) -> &[RankId] {
        &self.ranks
    }

    /// The links its ranks have unless a rank overrides them.
    pub fn links(&self) -> &RankLinks {
        &self.links
    }
}

/// A rack-scale machine: ranks grouped into scale-up domains, with the links of every rank.
///
/// A `Topology` is always valid: every rank `0..rank_count()` is in exactly one domain, every domain
/// has a rank, and every bandwidth is positive. Build one with [`crate::TopologyBuilder`], a
/// [`crate::Preset`], or [`Topology::from_toml_str`].
///
/// ```
/// use ultraep_topo::{LinkClass, Preset, RankId};
/// let topo = Preset::HgxH100.topology(2)?;
/// assert_eq!(topo.rank_count(), 16);
/// assert_eq!(topo.link_class(RankId(0), RankId(7))?, LinkClass::ScaleUp);
/// assert_eq!(topo.link_class(RankId(0), RankId(8))?, LinkClass::ScaleOut);
/// # Ok::<(), ultraep_topo::TopoError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topology {
    pub(crate) name: String,
    pub(crate) accelerator: Option<Accelerator>,
    pub(crate) domains: Vec<Domain>,
    /// The domain of every rank, indexed by rank.
    pub(crate) rank_domains: Vec<DomainId>,
    /// The links of every rank, indexed by rank (the domain's links unless overridden).
    pub(crate) rank_links: Vec<RankLinks>,
}

impl Topology {
    /// The topology's name, e.g. "GB200 NVL72 x2".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GPU at every rank, where known.
    pub fn accelerator(&self) -> Option<&Accelerator> {
        self.accelerator.as_ref()
    }

    /// How many ranks there are.
    pub fn rank_count(&self) -> usize {
        self.rank_domains.len()
    }

    /// How many scale-up domains there are.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// All ranks in ascending order.
    pub fn ranks(&self) -> impl ExactSizeIterator<Item = RankId> + '_ {
        (0..self.rank_domains.len() as u32).map(RankId)
    }

    /// All domains in order.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// The domain of every rank, indexed by rank: the form the planner takes.
    pub fn rank_domains(&self) -> &[DomainId] {
        &self.rank_domains
    }

    /// One domain.
    pub fn domain(&self, domain: DomainId) -> Result<&Domain, TopoError> {
        self.domains
            .get(domain.index())
            .ok_or(TopoError::UnknownDomain {
                domain: domain.0,
                domain_count: self.domains.len() as u32,
            })
    }

    /// The domain that holds `rank`.
    pub fn domain_of(&self, rank: RankId) -> Result<DomainId, TopoError> {
        self.rank_domains
            .get(rank.index())
            .copied()
            .ok_or_else(|| self.unknown_rank(rank))
    }

    /// The ranks of `domain` in ascending order.
    pub fn ranks_of(&self, domain: DomainId) -> Result<&[RankId], TopoError> {
        Ok(self.domain(domain)?.ranks())
    }

    /// Whether two ranks share a scale-up domain.
    pub fn same_domain(&self, a: RankId, b: RankId) -> Result<bool, TopoError> {
        Ok(self.domain_of(a)? == self.domain_of(b)?)
    }

    /// The links of `rank`.
    pub fn links(&self, rank: RankId) -> Result<&RankLinks, TopoError> {
        self.rank_links
            .get(rank.index())
            .ok_or_else(|| self.unknown_rank(rank))
    }

    /// Which kind of link joins `a` and `b`.
    pub fn link_class(&self, a: RankId, b: RankId) -> Result<LinkClass, TopoError> {
        let same_domain = self.same_domain(a, b)?;
        Ok(if a == b {
            LinkClass::SameRank
        } else if same_domain {
            LinkClass::ScaleUp
        } else {
            LinkClass::ScaleOut
        })
    }

    /// The path from `source` to `destination`: its class, slowest port and latency.
    pub fn path(&self, source: RankId, destination: RankId) -> Result<LinkPath, TopoError> {
        let class = self.link_class(source, destination)?;
        let from = self.links(source)?;
        let to = self.links(destination)?;
        Ok(match class {
            LinkClass::SameRank => LinkPath {
                class,
                bandwidth: None,
                latency: Nanos::ZERO,
            },
            LinkClass::ScaleUp => LinkPath {
                class,
                bandwidth: Some(from.scale_up_egress.min(to.scale_up_ingress)),
                latency: from.scale_up_latency.max(to.scale_up_latency),
            },
            LinkClass::ScaleOut => LinkPath {
                class,
                bandwidth: Some(from.scale_out.min(to.scale_out)),
                latency: from.scale_out_latency.max(to.scale_out_latency),
            },
        })
    }

    /// Time to move `bytes` from `source` to `destination` when the links are otherwise idle:
    /// latency + bytes / bandwidth of the slowest port. Zero when both are the same rank.
    ///
    /// ```
    /// use ultraep_topo::{Nanos, Preset, RankId};
    /// let topo = Preset::Gb200Nvl72.topology(1)?;
    /// // 9 MB at 900 GB/s is 10 us, plus 1 us of latency.
    /// assert_eq!(topo.transfer_time(RankId(0), RankId(1), 9_000_000)?, Nanos::from_micros(11));
    /// # Ok::<(), ultraep_topo::TopoError>(())
    /// ```
    pub fn transfer_time(
        &self,
        source: RankId,
        destination: RankId,
        bytes: u64,
    ) -> Result<Nanos, TopoError> {
        Ok(self.path(source, destination)?.transfer_time(bytes))
    }

    fn unknown_rank(&self, rank: RankId) -> TopoError {
        TopoError::UnknownRank {
            rank: rank.0,
            rank_count: self.rank_domains.len() as u32,
        }
    }
}
