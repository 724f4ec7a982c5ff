//! Expert-state transfers of ultraep: moving expert weights from masters to replica slots before the
//! token dispatch, and in training reducing replica gradients back into the masters.
//!
//! From a plan's replicas ([`ReplicaSet`]) and a topology, [`TransferSchedule::build`] chooses for
//! every replicated expert between direct fan-out and relay trees (flat or two relays deep, in
//! tiles or chunks), weighing every rank's egress and ingress across the layer
//! ([`RouteChooser`]). [`TileTaskList::build`] cuts the schedule into tile descriptors a GPU kernel
//! consumes as they are; [`simulate`] plays it on the topology's ports and compares it with the best
//! any schedule could do. The runtime's data planes execute it (`ultraep_runtime::HostPlane` on
//! CPU memory, and the CUDA planes), tracking every slot's [`SlotState`].
//!
//! Who uses it: `ultraep-kernels` (the task-list format), `ultraep-runtime`, `ultraep-bench`
//! and `ultraep-cli`.
//! What it may depend on: `ultraep-topo` and `ultraep-plan`; never CUDA. Schedules use integer
//! arithmetic only, so every rank builds the same one.

mod checksum;
mod chooser_layer;
mod chooser_per_expert;
mod config;
mod error;
mod flow;
mod migration;
mod pool;
mod reduction;
mod replicas;
mod route_choice;
mod schedule;
mod schedule_builder;
mod simulate;
mod slot_state;
mod state;
mod tasks;

pub use checksum::{Checksum, checksum};
pub use config::{RelayPieces, RouteChooser, TransferConfig, TransferCosts};
pub use error::XferError;
pub use migration::{LayoutTransition, MigrationChunk, TransitionPhase};
pub use pool::WorkerPool;
pub use reduction::{ReductionScratch, reduce_gradients};
pub use replicas::{Fanout, Region, ReplicaSet, ReplicaSetBuilder};
pub use schedule::{Hop, Piece, Route, ScheduledFanout, TransferSchedule};
pub use schedule_builder::ScheduleBuilder;
pub use simulate::{
    PlayedTransfer, ReplicaReady, Simulation, lower_bound, played_transfers, simulate,
    simulate_reduction,
};
pub use slot_state::SlotState;
pub use state::{ExpertState, Shard};
pub use tasks::{
    NO_FLAG, SLOT_REGION, TaskListBuilder, TileDestination, TileTask, TileTaskList, region_code,
    region_of,
};
