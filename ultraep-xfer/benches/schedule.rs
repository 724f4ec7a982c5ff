//! Building one layer's transfer schedule and tile task list: the planner's reference EP64 plans
//! (37-44 replicas of DeepSeek-V3 experts, 44 MB in FP8) on 64 GPUs with GB200 NVL72 links.
//! Schedule construction is on the critical path of every layer; the tile task list is the
//! device's to build in the published design and is measured here for the host plane.
//! `schedule/*` is the default layer chooser, `schedule-per-expert/*` the first chooser it
//! replaced, measured in the same run; both reuse their builder and schedule, as the engine does.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ultraep_plan::reference::ReferenceScenario;
use ultraep_plan::{Balancer, PlanConfig, Planner};
use ultraep_topo::{Preset, TopologyBuilder};
use ultraep_xfer::{
    ExpertState, ReplicaSet, RouteChooser, ScheduleBuilder, TileTaskList, TransferConfig,
    TransferSchedule,
};

fn layer_schedules(c: &mut Criterion) {
    let preset = Preset::Gb200Nvl72;
    let topology = TopologyBuilder::new("64 GPUs of an NVL72")
        .domain("rack0", 0..64, preset.links())
        .build()
        .expect("a valid topology");
    let state = ExpertState::swiglu_fp8(7168, 2048);
    for target in [1.5, 2.0, 3.0] {
        let scenario = ReferenceScenario::published(target);
        let load = scenario.generate();
        let layout = scenario.layout().expect("layout");
        let mut planner = Planner::new(
            layout.clone(),
            scenario.domains().expect("domains"),
            2,
            PlanConfig::default(),
        )
        .expect("planner");
        let plan = planner.plan(load.matrix()).expect("plan");
        let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).expect("replicas");
        for (name, chooser) in [
            ("schedule", RouteChooser::Layer),
            ("schedule-per-expert", RouteChooser::PerExpert),
        ] {
            let config = TransferConfig {
                chooser,
                ..TransferConfig::default()
            };
            let mut builder = ScheduleBuilder::default();
            let mut schedule = TransferSchedule::default();
            c.bench_function(&format!("{name}/imbalance-{target:.1}"), |b| {
                b.iter(|| {
                    builder
                        .build_into(
                            black_box(&replicas),
                            &state,
                            &topology,
                            config,
                            &mut schedule,
                        )
                        .expect("schedule");
                    black_box(schedule.relayed_count())
                })
            });
        }
        let schedule =
            TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default())
                .expect("schedule");
        c.bench_function(&format!("tile-tasks/imbalance-{target:.1}"), |b| {
            b.iter(|| TileTaskList::build(black_box(&schedule)))
        });
    }
}

criterion_group!(benches, layer_schedules);
criterion_main!(benches);
