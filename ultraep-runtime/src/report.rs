//! What the engine reports: per step, per restore, and summed over a run.

use std::fmt;
use std::time::Duration;

use ultraep_plan::PlanMetrics;

use crate::StepId;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The microbatch and layer.
    pub step: StepId,
    /// The plan's figures (imbalance before and after, replicas, tokens moved).
    pub metrics: PlanMetrics,
    /// Replicas whose weights were copied into a slot.
    pub copies: u32,
    /// Replicas whose slot already held the expert's current weights: no copy needed.
    pub copies_skipped: u32,
    /// Bytes the transfers stored.
    pub bytes_moved: u64,
    /// Time spent planning.
    pub planning: Duration,
    /// Time spent choosing slots and moving weights.
    pub transfer: Duration,
}

/// What bringing a step's replica weights back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Replicas whose weights were copied again (a later step had taken their slot).
    pub copies: u32,
    /// Replicas whose slot still held their weights.
    pub copies_skipped: u32,
    /// Bytes the transfers stored.
    pub bytes_moved: u64,
}

/// Figures over every successful step of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Steps.
    pub steps: u64,
    /// Sum over steps of the max/mean imbalance before balancing.
    pub initial_imbalance_sum: f64,
    /// Sum over steps of the max/mean imbalance under the plan.
    pub imbalance_sum: f64,
    /// The worst imbalance under a plan.
    pub worst_imbalance: f64,
    /// Replicas over all plans.
    pub replicas: u64,
    /// Replicas copied.
    pub copies: u64,
    /// Replicas whose slot already held them.
    pub copies_skipped: u64,
    /// Bytes stored by weight transfers.
    pub bytes_moved: u64,
    /// Time spent planning.
    pub planning: Duration,
    /// Time spent choosing slots and moving weights.
    pub transfer: Duration,
}

impl Summary {
    /// Adds one step.
    pub fn add(&mut self, report: &StepReport) {
        let imbalance = report.metrics.imbalance();
        self.steps += 1;
        self.initial_imbalance_sum += report.metrics.initial_imbalance();
        self.imbalance_sum += imbalance;
        self.worst_imbalance = self.worst_imbalance.max(imbalance);
        self.replicas += u64::from(report.metrics.replicas);
        self.copies += u64::from(report.copies);
        self.copies_skipped += u64::from(report.copies_skipped);
        self.bytes_moved += report.bytes_moved;
        self.planning += report.planning;
        self.transfer += report.transfer;
    }

    fn mean(&self, sum: f64) -> f64 {
        sum / (self.steps.max(1) as f64)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_step = |total: Duration| total.as_secs_f64() * 1e6 / (self.steps.max(1) as f64);
        writeln!(f, "steps                   {}", self.steps)?;
        writeln!(
            f,
            "imbalance (max/mean)    {:.3} before, {:.3} after (worst {:.3})",
            self.mean(self.initial_imbalance_sum),
            self.mean(self.imbalance_sum),
            self.worst_imbalance
        )?;
        writeln!(
            f,
            "replicas                {} ({} copied, {} already in place)",
            self.replicas, self.copies, self.copies_skipped
        )?;
        writeln!(f, "bytes moved             {}", self.bytes_moved)?;
        write!(
            f,
            "time per step           {:.1} us planning, {:.1} us placing and moving",
            per_step(self.planning),
            per_step(self.transfer)
        )
    }
}
