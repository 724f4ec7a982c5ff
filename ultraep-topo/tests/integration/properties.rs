//! Property tests: invariants that hold for every topology, however it was built.

use proptest::prelude::*;
use ultraep_topo::{
    Accelerator, Bandwidth, DomainId, LinkClass, Nanos, RankId, RankLinks, Topology,
    TopologyBuilder,
};

fn bandwidth() -> impl Strategy<Value = Bandwidth> {
    // Up to a petabyte per second: the range topology files accept.
    (1u64..=1_000_000_000_000_000).prop_map(|bytes| Bandwidth::bytes_per_second(bytes).unwrap())
}

fn latency() -> impl Strategy<Value = Nanos> {
    (0u64..=1_000_000_000_000).prop_map(Nanos::new)
}

fn links() -> impl Strategy<Value = RankLinks> {
    (bandwidth(), bandwidth(), latency(), bandwidth(), latency()).prop_map(
        |(scale_up_egress, scale_up_ingress, scale_up_latency, scale_out, scale_out_latency)| {
            RankLinks {
                scale_up_egress,
                scale_up_ingress,
                scale_up_latency,
                scale_out,
                scale_out_latency,
            }
        },
    )
}

fn accelerator() -> impl Strategy<Value = Option<Accelerator>> {
    proptest::option::of(
        (
            "[A-Za-z0-9 ()]{1,16}",
            1u64..=1_000_000_000,
            bandwidth(),
            1u64..=1_000_000_000_000_000,
        )
            .prop_map(
                |(name, dense_bf16_gflops, memory_bandwidth, memory_bytes)| Accelerator {
                    name,
                    dense_bf16_gflops,
                    memory_bandwidth,
                    memory_bytes,
                },
            ),
    )
}

/// Domains of random sizes over a random permutation of the ranks, with random links, an optional
/// accelerator and a few ranks whose links are overridden.
fn topology() -> impl Strategy<Value = Topology> {
    prop::collection::vec((1u32..=12, links()), 1..=6)
        .prop_flat_map(|domains| {
            let rank_count: u32 = domains.iter().map(|(size, _)| size).sum();
            let permutation = Just((0..rank_count).collect::<Vec<u32>>()).prop_shuffle();
            let overrides = prop::collection::btree_map(0..rank_count, links(), 0..3);
            (Just(domains), permutation, overrides, accelerator())
        })
        .prop_map(|(domains, permutation, overrides, accelerator)| {
            let mut builder = TopologyBuilder::new("random");
            if let Some(accelerator) = accelerator {
                builder = builder.accelerator(accelerator);
            }
            let mut next = 0;
            for (index, (size, links)) in domains.into_iter().enumerate() {
                let ranks = permutation[next..next + size as usize].to_vec();
                next += size as usize;
                builder = builder.domain(format!("d{index}"), ranks, links);
            }
            for (rank, links) in overrides {
                builder = builder.rank_links(rank, links);
            }
            builder
                .build()
                .expect("a partition of 0..N is a valid topology")
        })
}

proptest! {
    #[test]
    fn every_rank_is_in_exactly_one_domain(topo in topology()) {
        let listed: usize = topo.domains().iter().map(|domain| domain.ranks().len()).sum();
        prop_assert_eq!(listed, topo.rank_count());
        for rank in topo.ranks() {
            let holders = topo
                .domains()
                .iter()
                .filter(|domain| domain.ranks().contains(&rank))
                .count();
            prop_assert_eq!(holders, 1);
            let domain = topo.domain_of(rank).unwrap();
            prop_assert!(topo.ranks_of(domain).unwrap().contains(&rank));
        }
    }

    #[test]
    fn link_classes_follow_domains(topo in topology(), a in 0u32..72, b in 0u32..72) {
        let n = topo.rank_count() as u32;
        let (a, b) = (RankId(a % n), RankId(b % n));
        let class = topo.link_class(a, b).unwrap();
        prop_assert_eq!(class, topo.link_class(b, a).unwrap());
        let expected = if a == b {
            LinkClass::SameRank
        } else if topo.domain_of(a).unwrap() == topo.domain_of(b).unwrap() {
            LinkClass::ScaleUp
        } else {
            LinkClass::ScaleOut
        };
        prop_assert_eq!(class, expected);
    }

    #[test]
    fn transfer_time_grows_with_bytes(
        topo in topology(),
        a in 0u32..72,
        b in 0u32..72,
        small in 0u64..1 << 40,
        extra in 0u64..1 << 40,
    ) {
        let n = topo.rank_count() as u32;
        let (a, b) = (RankId(a % n), RankId(b % n));
        let fewer = topo.transfer_time(a, b, small).unwrap();
        let more = topo.transfer_time(a, b, small + extra).unwrap();
        prop_assert!(fewer <= more);
        let path = topo.path(a, b).unwrap();
        match path.bandwidth {
            // Moving more bytes than the bandwidth carries in one nanosecond always costs more time
            // (unless the time saturates, which takes a bandwidth of a few bytes per second).
            Some(bandwidth) if extra > bandwidth.get() / 1_000_000_000 && more < Nanos::MAX => {
                prop_assert!(fewer < more)
            }
            Some(_) => {}
            None => prop_assert_eq!(more, Nanos::ZERO),
        }
        prop_assert!(fewer >= path.latency);
    }

    #[test]
    fn file_round_trip_preserves_the_topology(topo in topology()) {
        let text = topo.to_toml_string().unwrap();
        let back = Topology::from_toml_str(&text);
        prop_assert_eq!(back.as_ref(), Ok(&topo), "file:\n{}", text);
    }

    #[test]
    fn a_rank_left_out_is_refused(topo in topology(), pick in 0usize..1000) {
        // Leaving out the highest rank number gives a smaller valid topology, so leave out any
        // other rank, from a domain that keeps at least one (an empty domain is another error).
        let highest = RankId(topo.rank_count() as u32 - 1);
        let candidates: Vec<RankId> = topo
            .domains()
            .iter()
            .filter(|domain| domain.ranks().len() > 1)
            .flat_map(|domain| domain.ranks().iter().copied())
            .filter(|&rank| rank != highest)
            .collect();
        prop_assume!(!candidates.is_empty());
        let dropped = candidates[pick % candidates.len()];
        let mut builder = TopologyBuilder::new("broken");
        for domain in topo.domains() {
            let ranks = domain.ranks().iter().filter(|&&rank| rank != dropped).map(|rank| rank.0);
            builder = builder.domain(domain.name(), ranks, *domain.links());
        }
        let error = builder.build().unwrap_err();
        prop_assert_eq!(
            error,
            ultraep_topo::TopoError::RankWithoutDomain {
                rank: dropped.0,
                rank_count: topo.rank_count() as u32 - 1,
            }
        );
    }

    #[test]
    fn a_rank_listed_twice_is_refused(topo in topology(), pick in 0u32..1000) {
        let rank = pick % topo.rank_count() as u32;
        let mut builder = TopologyBuilder::new("broken");
        for domain in topo.domains() {
            let ranks = domain.ranks().iter().map(|rank| rank.0);
            builder = builder.domain(domain.name(), ranks, *domain.links());
        }
        let last = topo.domains().last().unwrap();
        builder = builder.domain("extra", [rank], *last.links());
        prop_assert!(builder.build().is_err());
    }
}

#[test]
fn queries_of_unknown_ranks_and_domains_are_errors() {
    let topo = ultraep_topo::Preset::HgxH100.topology(1).unwrap();
    let message = topo.domain_of(RankId(8)).unwrap_err().to_string();
    assert_eq!(
        message,
        "rank 8 does not exist (the topology has ranks 0 to 7)"
    );
    assert!(topo.transfer_time(RankId(0), RankId(99), 1).is_err());
    assert!(topo.ranks_of(DomainId(1)).is_err());
}
