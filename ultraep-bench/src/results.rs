//! What a run is asked to do ([`RunConfig`]) and what it finds: every balancer's figures on a
//! scenario and the overheads on ultraep's critical path, by part.

use serde::Serialize;

use crate::scenario::Scenario;
use crate::step::Efficiency;

/// One balancer's results on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancerResult {
    /// The balancer.
    pub balancer: &'static str,
    /// Mean max/mean rank imbalance under its plans.
    pub imbalance: f64,
    /// Worst layer's max/mean imbalance.
    pub worst_imbalance: f64,
    /// Mean step seconds.
    pub step_seconds: f64,
    /// Model TFLOPS per GPU.
    pub tflops_per_gpu: f64,
    /// Throughput as a fraction of the ideal's.
    pub fraction_of_ideal: f64,
    /// The largest dispatch receive buffer any rank needed, in bytes.
    pub peak_receive_bytes: u64,
    /// Mean microseconds of planning per layer charged on the critical path (the published GPU
    /// planner's time; ultraep only).
    pub planning_us: f64,
    /// Mean microseconds of one plan measured on this host (the median of three warm runs of the
    /// real planner): reported beside the simulated figures, never part of them.
    pub planning_host_us: f64,
    /// Mean microseconds of weight transfer per layer on the critical path.
    pub transfer_us: f64,
    /// ultraep only: the same plans with their transfers scheduled by the first, per-expert
    /// chooser ([`ultraep_xfer::RouteChooser::PerExpert`]), simulated in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chooser: Option<FirstChooser>,
    /// Mean microseconds per layer of everything the balancer puts on the critical path, by part.
    pub overhead: OverheadBreakdown,
    /// Mean replicas per layer.
    pub replicas: f64,
    /// Mean imbalance of every simulated layer (averaged over steps), for plots.
    pub per_layer_imbalance: Vec<f64>,
}

/// ultraep's figures had the first, per-expert route chooser scheduled its weight transfers: the
/// same plans, every other charge the same (simulated, in the same run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstChooser {
    /// Mean microseconds of weight transfer per layer on the critical path.
    pub transfer_us: f64,
    /// Its busiest port's bytes at link speed, per layer (not charged: the bound).
    pub transfer_port_bound_us: f64,
    /// Mean step seconds.
    pub step_seconds: f64,
    /// Throughput as a fraction of the ideal's.
    pub fraction_of_ideal: f64,
}

/// What a balancer puts on one layer's critical path, in microseconds, averaged over layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OverheadBreakdown {
    /// The all-gather of the load.
    pub all_gather_us: f64,
    /// Planning (or LPLB's linear program).
    pub planning_us: f64,
    /// Building the transfer task lists.
    pub task_lists_us: f64,
    /// Weight transfers (forward, and in training the restore before backward).
    pub transfer_us: f64,
    /// What the token reroute adds beyond the weight transfer it overlaps.
    pub reroute_us: f64,
    /// The part of the gradient reduction that attention's backward does not hide (training).
    pub reduction_us: f64,
    /// Not charged: the weight transfers' physical bound, their busiest port's bytes at link
    /// speed (as many times as `transfer_us` counts a transfer), to show how far the schedule is
    /// from it.
    pub transfer_port_bound_us: f64,
}

impl OverheadBreakdown {
    /// The whole overhead.
    pub fn total_us(&self) -> f64 {
        self.all_gather_us
            + self.planning_us
            + self.task_lists_us
            + self.transfer_us
            + self.reroute_us
            + self.reduction_us
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.all_gather_us += other.all_gather_us;
        self.planning_us += other.planning_us;
        self.task_lists_us += other.task_lists_us;
        self.transfer_us += other.transfer_us;
        self.reroute_us += other.reroute_us;
        self.reduction_us += other.reduction_us;
        self.transfer_port_bound_us += other.transfer_port_bound_us;
    }

    pub(crate) fn scaled(&self, factor: f64) -> Self {
        Self {
            all_gather_us: self.all_gather_us * factor,
            planning_us: self.planning_us * factor,
            task_lists_us: self.task_lists_us * factor,
            transfer_us: self.transfer_us * factor,
            reroute_us: self.reroute_us * factor,
            reduction_us: self.reduction_us * factor,
            transfer_port_bound_us: self.transfer_port_bound_us * factor,
        }
    }
}

/// Every balancer's results on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The model's name.
    pub model: &'static str,
    /// Mean no-balancing imbalance of the generated loads.
    pub initial_imbalance: f64,
    /// Mean of the lowest imbalance any plan could reach with replicas kept in their domains.
    pub bound_imbalance: f64,
    /// The calibrated skew exponent of the workload.
    pub skew: f64,
    /// The compute rates the step simulator ran at.
    pub efficiency: Efficiency,
    /// Results in [`crate::experiment::BALANCERS`] order.
    pub balancers: Vec<BalancerResult>,
}

impl ScenarioResult {
    /// The result of one balancer.
    pub fn balancer(&self, name: &str) -> Option<&BalancerResult> {
        self.balancers.iter().find(|b| b.balancer == name)
    }

    /// ultraep's throughput over no balancing.
    pub fn speedup_over_none(&self) -> f64 {
        match (self.balancer("ultraep"), self.balancer("none")) {
            (Some(ultraep), Some(none)) => none.step_seconds / ultraep.step_seconds,
            _ => 1.0,
        }
    }
}
