//! The slow loop's per-layer gate in decode, and how its two settings are chosen.
//!
//! A gate decides, before a step, whether a layer is balanced on the critical path (its counts
//! gathered and planned, or re-split among resident replicas) or runs with masters only, at no
//! cost. It learns only what a rank knows once a step is done: the net saving its own cost model
//! predicts for balancing that step (the busiest rank's cost with masters only less its cost
//! under the plan, in the plan's [`ultraep_plan::InstanceCost`], less the overheads balancing
//! puts on the critical path), computed from the step's counts gathered off the critical path.
//! It never sees the simulated outcome.
//!
//! Its margin and window are chosen by [`tune`] on seeds other than those a report shows: the
//! setting of [`GateSettings::GRID`] with the lowest mean step time over the tuning runs among
//! those whose every step stays within 1% of no balancing (or, if none does, the one whose worst
//! step is best).

use serde::Serialize;

/// A gate's two settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GateSettings {
    /// The net saving, in multiples of the layer's all-gather and planning, that every recent
    /// step must have shown.
    pub margin: f64,
    /// Steps of evidence the gate wants.
    pub window: usize,
}

impl GateSettings {
    /// The settings [`tune`] chooses among.
    pub const GRID: [Self; 12] = {
        let margins = [0.0, 0.5, 1.0, 2.0];
        let windows = [1, 2, 4];
        let mut grid = [Self {
            margin: 0.0,
            window: 1,
        }; 12];
        let mut index = 0;
        while index < 12 {
            grid[index] = Self {
                margin: margins[index / 3],
                window: windows[index % 3],
            };
            index += 1;
        }
        grid
    };
}

/// One layer's gate: balanced while the net saving predicted on each of its last `window` steps
/// exceeded `margin` seconds.
#[derive(Debug, Clone)]
pub struct LayerGate {
    margin: f64,
    recent: Vec<f64>,
    next: usize,
    seen: usize,
}

impl LayerGate {
    /// A gate that has seen nothing, for a layer whose all-gather and planning cost `sunk`
    /// seconds.
    pub fn new(settings: GateSettings, sunk: f64) -> Self {
        Self {
            margin: settings.margin * sunk,
            recent: vec![0.0; settings.window.max(1)],
            next: 0,
            seen: 0,
        }
    }

    /// Records the net saving a rank predicted for the step just done.
    pub fn learn(&mut self, predicted_saving: f64) {
        let window = self.recent.len();
        self.recent[self.next] = predicted_saving;
        self.next = (self.next + 1) % window;
        self.seen += 1;
    }

    /// Whether the next step balances the layer.
    pub fn on(&self) -> bool {
        self.seen >= self.recent.len() && self.recent.iter().all(|&saving| saving > self.margin)
    }
}

/// One layer of one step, as a gated variant sees it: its seconds with masters only, its seconds
/// balanced (overheads included), and the net saving a rank predicts for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatedLayer {
    /// Seconds with masters only.
    pub masters: f64,
    /// Seconds balanced, every overhead charged.
    pub balanced: f64,
    /// The rank's own prediction of what balancing saves, overheads deducted.
    pub predicted_saving: f64,
}

/// One step as a gated variant sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedStep {
    /// Whether the step is reported (warm-up steps only teach the gates).
    pub measured: bool,
    /// Seconds outside the MoE layers, and any wait the step has whatever the gates decide
    /// (a slow loop's transfers beyond the idle links), for the gated variant.
    pub fixed: f64,
    /// Seconds outside the MoE layers with masters only.
    pub masters_fixed: f64,
    /// The simulated layers (each stands for `layer_scale` of the model's).
    pub layers: Vec<GatedLayer>,
}

/// What a gated variant did over a run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct GatedRun {
    /// Total seconds of the measured steps, gated.
    pub seconds: f64,
    /// Total seconds of the measured steps with masters only.
    pub masters_seconds: f64,
    /// The largest ratio of a measured step's time to its time with masters only.
    pub worst_ratio: f64,
    /// Measured steps slower than masters only.
    pub slower_steps: u32,
    /// Measured (step, layer)s balanced.
    pub balanced_layers: u32,
    /// Measured (step, layer)s.
    pub layers: u32,
    /// Measured steps.
    pub steps: u32,
}

/// Replays `steps` behind gates of `settings`, each layer's all-gather and planning costing
/// `sunk` seconds and standing for `layer_scale` of the model's layers.
pub fn replay(
    steps: &[GatedStep],
    settings: GateSettings,
    sunk: f64,
    layer_scale: f64,
) -> GatedRun {
    let layers = steps.first().map_or(0, |step| step.layers.len());
    let mut gates = vec![LayerGate::new(settings, sunk); layers];
    let mut run = GatedRun::default();
    for step in steps {
        let (mut gated, mut masters) = (step.fixed, step.masters_fixed);
        for (layer, gate) in step.layers.iter().zip(&mut gates) {
            let on = gate.on();
            gated += layer_scale * if on { layer.balanced } else { layer.masters };
            masters += layer_scale * layer.masters;
            if step.measured {
                run.balanced_layers += u32::from(on);
                run.layers += 1;
            }
            gate.learn(layer.predicted_saving);
        }
        if step.measured {
            run.seconds += gated;
            run.masters_seconds += masters;
            run.worst_ratio = run.worst_ratio.max(gated / masters);
            run.slower_steps += u32::from(gated > masters);
            run.steps += 1;
        }
    }
    run
}

/// The setting of [`GateSettings::GRID`] for `runs` (each a run's steps, `sunk` and
/// `layer_scale`): the lowest total time among those whose worst step is within 1% of masters
/// only on every run, else the lowest worst step (ties: the earlier, more eager, setting).
pub fn tune(runs: &[(Vec<GatedStep>, f64, f64)]) -> GateSettings {
    let score = |settings: GateSettings| {
        let (mut seconds, mut worst) = (0.0f64, 0.0f64);
        for (steps, sunk, scale) in runs {
            let run = replay(steps, settings, *sunk, *scale);
            seconds += run.seconds / run.masters_seconds.max(f64::MIN_POSITIVE);
            worst = worst.max(run.worst_ratio);
        }
        (seconds, worst)
    };
    let scored: Vec<(GateSettings, f64, f64)> = GateSettings::GRID
        .iter()
        .map(|&settings| {
            let (seconds, worst) = score(settings);
            (settings, seconds, worst)
        })
        .collect();
    // `min_by` keeps the first of equal candidates: the earlier, more eager, setting.
    let best = scored
        .iter()
        .filter(|(_, _, worst)| *worst <= 1.01)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .or_else(|| scored.iter().min_by(|a, b| a.2.total_cmp(&b.2)));
    best.map_or(GateSettings::GRID[0], |(settings, _, _)| *settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_after_a_window_of_savings_and_closes_at_one_shortfall() {
        let settings = GateSettings {
            margin: 2.0,
            window: 4,
        };
        let mut gate = LayerGate::new(settings, 0.5);
        for _ in 0..3 {
            gate.learn(2.5);
            assert!(!gate.on(), "too little evidence yet");
        }
        gate.learn(2.5);
        assert!(gate.on());
        // A saving below the margin (2 x 0.5) closes it for a whole window.
        gate.learn(0.5);
        for _ in 0..4 {
            assert!(!gate.on());
            gate.learn(2.5);
        }
        assert!(gate.on());
        gate.learn(-3.0);
        assert!(!gate.on());
    }

    fn step(balanced: f64, predicted: f64) -> GatedStep {
        GatedStep {
            measured: true,
            fixed: 1.0,
            masters_fixed: 1.0,
            layers: vec![GatedLayer {
                masters: 1.0,
                balanced,
                predicted_saving: predicted,
            }],
        }
    }

    #[test]
    fn a_replay_charges_the_balanced_time_only_where_the_gate_is_on() {
        // Balancing saves 0.5 s and is predicted to; the gate (window 2) opens on the third step.
        let steps = vec![step(0.5, 0.5); 5];
        let settings = GateSettings {
            margin: 0.0,
            window: 2,
        };
        let run = replay(&steps, settings, 0.1, 1.0);
        assert_eq!(run.balanced_layers, 3);
        assert_eq!(run.seconds, 2.0 * 2.0 + 3.0 * 1.5);
        assert_eq!(run.masters_seconds, 10.0);
        assert_eq!(run.slower_steps, 0);
    }

    #[test]
    fn tuning_avoids_a_setting_that_makes_a_step_slower() {
        // Balancing saves on two steps of three, and every third step it is 5% slower (which
        // its prediction shows only once that step is done). A gate that opens on one or two
        // steps of evidence is on for those slower steps; one that wants four never opens. The
        // tuner must pick a setting whose worst step stays within 1%.
        let mut steps = Vec::new();
        for index in 0..12 {
            steps.push(if index % 3 == 2 {
                step(1.05, -1.0)
            } else {
                step(0.5, 0.5)
            });
        }
        let chosen = tune(&[(steps.clone(), 0.1, 1.0)]);
        let run = replay(&steps, chosen, 0.1, 1.0);
        assert!(run.worst_ratio <= 1.01, "{chosen:?}: {run:?}");
        // And among the settings that meet it, the fastest.
        for settings in GateSettings::GRID {
            let other = replay(&steps, settings, 0.1, 1.0);
            if other.worst_ratio <= 1.01 {
                assert!(
                    run.seconds <= other.seconds,
                    "{settings:?} beats {chosen:?}"
                );
            }
        }
    }
}
