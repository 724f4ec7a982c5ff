//! A human description of a plan: what `ultraep plan --text` prints and the snapshots record.

use std::fmt;

use crate::{Plan, PlanKind};

impl fmt::Display for Plan {
    /// A summary line, the rank loads, then one line per expert with replicas (the others keep all
    /// their tokens on their master).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let metrics = &self.metrics;
        let kind = match self.kind {
            PlanKind::Realizable => "plan",
            PlanKind::Ideal => "ideal (not realizable)",
        };
        writeln!(
            f,
            "{kind}: {} ranks, {} experts, {} replicas; max/mean {:.3} (from {:.3}; bound {:.3})",
            metrics.num_ranks,
            self.num_experts(),
            metrics.replicas,
            metrics.imbalance(),
            metrics.initial_imbalance(),
            metrics.lower_bound_imbalance(),
        )?;
        write!(f, "rank loads:")?;
        for load in &self.rank_loads {
            write!(f, " {load}")?;
        }
        writeln!(f)?;
        for expert in 0..self.num_experts() {
            let instances = self.instances_of(expert);
            if instances.len() < 2 {
                continue;
            }
            write!(f, "expert {expert}:")?;
            for (index, instance) in instances.iter().enumerate() {
                let separator = if index == 0 { "" } else { "," };
                match instance.replica_slot {
                    None => write!(
                        f,
                        "{separator} rank {} (master) {}",
                        instance.rank, instance.quota
                    )?,
                    Some(slot) => write!(
                        f,
                        "{separator} rank {} (slot {slot}) {}",
                        instance.rank, instance.quota
                    )?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
