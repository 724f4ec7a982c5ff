//! The cost-aware objective on small problems worked by hand: when a replica's weight read pays
//! for the tokens it takes, and when it does not.

use ultraep_plan::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, PlanConfig, Planner, RankDomains,
};

/// Four ranks of one domain, one expert each, one slot each; every rank sends `hot` tokens to
/// expert 0 and `cold` to the expert on its own rank: expert 0 takes `4 hot + cold` tokens,
/// experts 1-3 `cold` each.
fn plan_of(hot: u32, cold: u32, cost: InstanceCost) -> ultraep_plan::Plan {
    let mut loads = vec![0u32; 16];
    for source in 0..4 {
        loads[source * 4] += hot;
        loads[source * 4 + source] += cold;
    }
    let config = PlanConfig {
        min_replica_tokens: 1,
        cost,
        ..PlanConfig::default()
    };
    let mut planner = Planner::new(
        ExpertLayout::contiguous(4, 1).unwrap(),
        RankDomains::single(4).unwrap(),
        1,
        config,
    )
    .unwrap();
    planner
        .plan(LoadMatrix::new(&loads, 4, 4).unwrap())
        .unwrap()
}

struct Case {
    hot: u32,
    cold: u32,
    per_instance: u64,
    replicas: u32,
    busiest_cost: u64,
}

#[test]
fn a_replica_is_made_only_where_its_tokens_pay_for_its_weight_read() {
    let cases = [
        // Tokens only: expert 0's 50 tokens against 10 elsewhere are split four ways, 80 / 4.
        Case {
            hot: 10,
            cold: 10,
            per_instance: 0,
            replicas: 3,
            busiest_cost: 20,
        },
        // A read worth 5 tokens: rank costs 55, 15, 15, 15; three replicas pay, and the three
        // reads they add (15) lift the even share from 25 to 115 / 4, so 29.
        Case {
            hot: 10,
            cold: 10,
            per_instance: 5,
            replicas: 3,
            busiest_cost: 29,
        },
        // A weight read worth 100 tokens: rank 0 costs 150 and the others 110; a replica would
        // put at least 100 + 1 on a rank at 110, above 150, so none is made.
        Case {
            hot: 10,
            cold: 10,
            per_instance: 100,
            replicas: 0,
            busiest_cost: 150,
        },
        // Many tokens: a read worth 100 tokens pays for replicas of a 4,010-token expert;
        // (4,010 + 30 + 7 x 100) / 4 = 1,185 is the even share with three replicas, and the
        // busiest rank ends within the 1% tolerance of it.
        Case {
            hot: 1000,
            cold: 10,
            per_instance: 100,
            replicas: 3,
            busiest_cost: 1190,
        },
    ];
    for case in cases {
        let cost = InstanceCost {
            per_token: 1,
            per_instance: case.per_instance,
        };
        let plan = plan_of(case.hot, case.cold, cost);
        let mut rank_cost = [0u64; 4];
        for instance in plan.instances() {
            rank_cost[instance.rank as usize] += cost.of(u64::from(instance.quota));
        }
        let busiest = rank_cost.iter().copied().max().unwrap();
        assert_eq!(
            (plan.metrics().replicas, busiest),
            (case.replicas, case.busiest_cost),
            "hot {} cold {} read {}: rank costs {rank_cost:?}",
            case.hot,
            case.cold,
            case.per_instance
        );
    }
}
