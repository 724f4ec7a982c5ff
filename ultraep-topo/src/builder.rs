//! Building a topology from domains, with every rule checked once.

use crate::{Accelerator, Domain, DomainId, RankId, RankLinks, TopoError, Topology};

/// Collects domains and per-rank link overrides, then checks them into a [`Topology`].
///
/// ```
/// use ultraep_topo::{Bandwidth, Nanos, RankLinks, TopologyBuilder};
/// let gb = |n| Bandwidth::gigabytes_per_second(n).unwrap();
/// let links = RankLinks {
///     scale_up_egress: gb(450),
///     scale_up_ingress: gb(450),
///     scale_up_latency: Nanos::from_micros(1),
///     scale_out: gb(50),
///     scale_out_latency: Nanos::from_micros(3),
/// };
/// let topo = TopologyBuilder::new("two odd nodes")
///     .domain("big", 0..6, links)
///     .domain("small", 6..8, links)
///     .build()?;
/// assert_eq!(topo.domain_count(), 2);
/// # Ok::<(), ultraep_topo::TopoError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    name: String,
    accelerator: Option<Accelerator>,
    domains: Vec<(String, Vec<u32>, RankLinks)>,
    overrides: Vec<(u32, RankLinks)>,
}

impl TopologyBuilder {
    /// Starts a topology called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            accelerator: None,
            domains: Vec::new(),
            overrides: Vec::new(),
        }
    }

    /// Sets the GPU found at every rank.
    pub fn accelerator(mut self, accelerator: Accelerator) -> Self {
        self.accelerator = Some(accelerator);
        self
    }

    /// Adds a domain holding `ranks`, whose ranks have `links` unless overridden.
    pub fn domain(
        mut self,
        name: impl Into<String>,
        ranks: impl IntoIterator<Item = u32>,
        links: RankLinks,
    ) -> Self {
        self.domains
            .push((name.into(), ranks.into_iter().collect(), links));
        self
    }

    /// Gives one rank links other than its domain's (a slower or degraded GPU, for instance).
    pub fn rank_links(mut self, rank: u32, links: RankLinks) -> Self {
        self.overrides.push((rank, links));
        self
    }

    /// Checks every rule and returns the topology, or the first rule broken.
    pub fn build(self) -> Result<Topology, TopoError> {
        if self.domains.is_empty() {
            return Err(TopoError::Empty);
        }
        let rank_count: usize = self.domains.iter().map(|(_, ranks, _)| ranks.len()).sum();
        // A rank listed twice makes the sum larger than the number of distinct ranks; it is caught
        // below, so the table is sized to hold every rank number that may legally appear.
        let mut owner: Vec<Option<usize>> = vec![None; rank_count];
        // Names seen so far: a set, so that many domains are checked in n log n, not n^2.
        let mut names = std::collections::BTreeSet::new();
        for (index, (name, ranks, _)) in self.domains.iter().enumerate() {
            if name.is_empty() {
                return Err(TopoError::EmptyDomainName { index });
            }
            if !names.insert(name.as_str()) {
                return Err(TopoError::DuplicateDomainName { name: name.clone() });
            }
            if ranks.is_empty() {
                return Err(TopoError::EmptyDomain {
                    domain: name.clone(),
                });
            }
            for &rank in ranks {
                let slot = owner
                    .get_mut(rank as usize)
                    .ok_or_else(|| first_gap(&self.domains, rank_count))?;
                if let Some(first) = *slot {
                    return Err(TopoError::RankListedTwice {
                        rank,
                        first: self.domains[first].0.clone(),
                        second: name.clone(),
                    });
                }
                *slot = Some(index);
            }
        }
        // Every slot is filled: `rank_count` distinct ranks below `rank_count` were placed.
        let rank_domains: Vec<DomainId> = owner
            .iter()
            .map(|slot| DomainId(slot.unwrap_or_default() as u32))
            .collect();
        let mut rank_links: Vec<RankLinks> = rank_domains
            .iter()
            .map(|domain| self.domains[domain.index()].2)
            .collect();
        let mut overridden = vec![false; rank_count];
        for &(rank, links) in &self.overrides {
            let (Some(slot), Some(seen)) = (
                rank_links.get_mut(rank as usize),
                overridden.get_mut(rank as usize),
            ) else {
                return Err(TopoError::UnknownRank {
                    rank,
                    rank_count: rank_count as u32,
                });
            };
            if std::mem::replace(seen, true) {
                return Err(TopoError::RankOverriddenTwice { rank });
            }
            *slot = links;
        }
        let domains = self
            .domains
            .into_iter()
            .map(|(name, mut ranks, links)| {
                ranks.sort_unstable();
                Domain {
                    name,
                    ranks: ranks.into_iter().map(RankId).collect(),
                    links,
                }
            })
            .collect();
        Ok(Topology {
            name: self.name,
            accelerator: self.accelerator,
            domains,
            rank_domains,
            rank_links,
        })
    }
}

/// The error for a rank number at or above the rank count: some smaller rank must be missing, and
/// naming the smallest missing one tells the user what to fix.
fn first_gap(domains: &[(String, Vec<u32>, RankLinks)], rank_count: usize) -> TopoError {
    let mut seen = vec![false; rank_count];
    for &rank in domains.iter().flat_map(|(_, ranks, _)| ranks) {
        if let Some(slot) = seen.get_mut(rank as usize) {
            *slot = true;
        }
    }
    let rank = seen.iter().position(|&seen| !seen).unwrap_or(rank_count) as u32;
    TopoError::RankWithoutDomain {
        rank,
        rank_count: rank_count as u32,
    }
}
