//! The published scenarios: models, machines, modes and the figures the paper reports for each,
//! which the experiments are calibrated against and compared with.

use serde::Serialize;

use crate::BenchError;
use crate::machine::Machine;
use crate::models::ModelShape;
use crate::run_config::RunConfig;
use ultraep_plan::LoadMatrix;

use crate::step::{Hardware, Mode, SimulatedLayer};
use crate::workload::{WorkloadConfig, calibrate_skew};

/// Where a scenario's compute rates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EfficiencySource {
    /// [`crate::step::Efficiency::ASSUMED`]: nothing published to fit.
    Assumed,
    /// Both rates fitted to the scenario's own published ideal and no-balancing TFLOPS.
    Fitted,
    /// The expert rate of the named scenario, and the dense rate fitted so that no balancing
    /// reaches the fraction of the ideal that the scenario's published figures imply (ultraep's
    /// fraction of ideal over its speedup): prefill, which publishes no TFLOPS.
    FittedToNone {
        /// The published scenario whose expert rate is kept.
        experts_from: &'static str,
    },
    /// The rates of the named published scenario (same model and mode, or family).
    FittedOn(&'static str),
}

/// A published scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scenario {
    /// Its name in reports.
    pub name: &'static str,
    /// The model.
    #[serde(skip)]
    pub model: ModelShape,
    /// Training or prefill.
    pub mode: Mode,
    /// The published no-balancing max/mean imbalance the workload is calibrated to.
    pub target_imbalance: f64,
    /// Mean tokens per rank per microbatch.
    pub tokens_per_rank: u32,
    /// Attention context length.
    pub sequence: u64,
    /// Log-normal spread of tokens per rank (prefill batches are uneven).
    pub uneven_tokens: f64,
    /// The published figures: final imbalance with ultraep, and its fraction of ideal throughput
    /// where published.
    pub published_final: f64,
    /// Published fraction of ideal throughput with ultraep, where published.
    pub published_fraction: Option<f64>,
    /// Published throughput of ultraep over no balancing, where published.
    pub published_speedup: Option<f64>,
    /// Published fraction of ideal throughput with EPLB (training's TFLOPS table).
    pub published_eplb_fraction: Option<f64>,
    /// Published max/mean imbalance with EPLB (prefill).
    pub published_eplb_imbalance: Option<f64>,
    /// Published TFLOPS per GPU of every balancer (training).
    pub published_tflops: Option<PublishedTflops>,
    /// Where the compute rates of the step simulator come from.
    pub efficiency: EfficiencySource,
    /// The GPUs the group spans.
    pub machine: Machine,
    /// Whether the loads are drawn per microbatch rather than their expectation.
    pub sampled: bool,
}

/// The TFLOPS per GPU the paper publishes for a training scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PublishedTflops {
    /// The force-balanced ideal.
    pub ideal: f64,
    /// UltraEP.
    pub ultraep: f64,
    /// No balancing.
    pub none: f64,
    /// EPLB.
    pub eplb: f64,
    /// LPLB.
    pub lplb: f64,
}

impl Scenario {
    /// The seven published scenarios at EP64 (`ultraep-facts.md` section 6).
    pub fn published() -> Vec<Scenario> {
        // Training: the published TFLOPS per GPU (ideal, ultraep, none, EPLB, LPLB) give every
        // ratio; the ideal's and none's fix the compute rates, the rest are predictions.
        let training =
            |name, model, target, published_final, [ideal, ultraep, none, eplb, lplb]: [f64; 5]| {
                Scenario {
                    name,
                    model,
                    mode: Mode::Training,
                    target_imbalance: target,
                    tokens_per_rank: 8192,
                    sequence: 4096,
                    uneven_tokens: 0.0,
                    published_final,
                    published_fraction: Some(ultraep / ideal),
                    published_speedup: Some(ultraep / none),
                    published_eplb_fraction: Some(eplb / ideal),
                    published_eplb_imbalance: None,
                    published_tflops: Some(PublishedTflops {
                        ideal,
                        ultraep,
                        none,
                        eplb,
                        lplb,
                    }),
                    efficiency: EfficiencySource::Fitted,
                    machine: Machine::Nvl72 { ranks: 64 },
                    sampled: false,
                }
            };
        // Prefill publishes no TFLOPS. Where it publishes ultraep's fraction of ideal and speedup
        // (their ratio is no balancing's fraction of ideal), the dense rate is fitted to that and
        // the expert rate is the one fitted on the training scenario of the same model, or of its
        // family for GLM-4.7 (GLM-4.5-Air); the other request mix takes the rates of the same
        // model's fitted mix.
        let prefill =
            |name, model, target, published_final, eplb, fraction, speedup, rates| Scenario {
                name,
                model,
                mode: Mode::Prefill,
                target_imbalance: target,
                tokens_per_rank: 16384,
                sequence: 8192,
                uneven_tokens: 0.4,
                published_final,
                published_fraction: fraction,
                published_speedup: speedup,
                published_eplb_fraction: None,
                published_eplb_imbalance: Some(eplb),
                published_tflops: None,
                efficiency: rates,
                machine: Machine::Nvl72 { ranks: 64 },
                sampled: false,
            };
        vec![
            training(
                "GLM-4.5-Air training",
                ModelShape::GLM_4_5_AIR,
                2.23,
                1.02,
                [785.4, 757.0, 545.0, 646.0, 618.0],
            ),
            training(
                "Qwen3-235B training",
                ModelShape::QWEN3_235B,
                2.86,
                1.03,
                [574.7, 524.0, 315.0, 449.0, 385.0],
            ),
            training(
                "DeepSeek-V3 training",
                ModelShape::DEEPSEEK_V3,
                1.30,
                1.01,
                [637.6, 613.0, 509.0, 505.0, 516.0],
            ),
            prefill(
                "Qwen3-235B prefill STEM",
                ModelShape::QWEN3_235B,
                3.68,
                1.04,
                2.59,
                Some(0.97),
                Some(2.1),
                EfficiencySource::FittedToNone {
                    experts_from: "Qwen3-235B training",
                },
            ),
            prefill(
                "Qwen3-235B prefill mixed",
                ModelShape::QWEN3_235B,
                4.01,
                1.03,
                2.56,
                None,
                None,
                EfficiencySource::FittedOn("Qwen3-235B prefill STEM"),
            ),
            prefill(
                "GLM-4.7 prefill STEM",
                ModelShape::GLM_4_7,
                3.09,
                1.01,
                2.05,
                Some(0.90),
                Some(1.8),
                EfficiencySource::FittedToNone {
                    experts_from: "GLM-4.5-Air training",
                },
            ),
            prefill(
                "GLM-4.7 prefill mixed",
                ModelShape::GLM_4_7,
                2.06,
                1.01,
                1.80,
                None,
                None,
                EfficiencySource::FittedOn("GLM-4.7 prefill STEM"),
            ),
        ]
    }
}

impl Scenario {
    /// One layer of this scenario to simulate: `model` (this scenario's, perhaps with another
    /// top-k) on `hardware` under `loads`, every rank's scale-up domain in `domains`.
    pub fn layer<'a>(
        &self,
        model: &'a ModelShape,
        hardware: &'a Hardware,
        loads: LoadMatrix<'a>,
        domains: &'a [u32],
    ) -> SimulatedLayer<'a> {
        SimulatedLayer {
            model,
            mode: self.mode,
            hardware,
            loads,
            sequence: self.sequence,
            domains,
        }
    }

    /// Groups that span scale-up domains, which the paper does not evaluate: EP128 over two GB200
    /// NVL72 racks (64 GPUs of each) and EP32 over four HGX H100 nodes. Replicas cannot leave
    /// their master's domain, so the imbalance between domains stays. Each is the model's
    /// published training scenario with its no-balancing imbalance (the workload calibrated to it
    /// at the new size); there are no published figures to compare.
    pub fn spanning_domains() -> Vec<Scenario> {
        let published = Self::published();
        let of = |name: &str| published.iter().copied().find(|s| s.name == name);
        let mut spanning = Vec::new();
        if let Some(base) = of("DeepSeek-V3 training") {
            spanning.push(Scenario {
                name: "DeepSeek-V3 training, EP128 on 2 NVL72 racks",
                machine: Machine::Nvl72Racks {
                    racks: 2,
                    per_rack: 64,
                },
                ..Self::unpublished(base)
            });
        }
        if let Some(base) = of("Qwen3-235B training") {
            spanning.push(Scenario {
                name: "Qwen3-235B training, EP32 on 4 HGX H100 nodes",
                machine: Machine::HgxH100 { nodes: 4 },
                ..Self::unpublished(base)
            });
        }
        spanning
    }

    /// Decode, which the paper does not evaluate: Qwen3-235B on EP64 with 64 sequences per rank
    /// decoding one token each over an 8192-token context, the popularity of its STEM prefill
    /// (its no-balancing imbalance as the target), and every count drawn per microbatch: with
    /// about 4 tokens per expert and rank, the draws are most of the imbalance. An expert's time
    /// is then mostly reading its weights, which a replica reads again.
    pub fn decode() -> Vec<Scenario> {
        Self::published()
            .into_iter()
            .find(|s| s.name == "Qwen3-235B prefill STEM")
            .map(|base| Scenario {
                name: "Qwen3-235B decode, 64 sequences per rank",
                mode: Mode::Decode,
                tokens_per_rank: 64,
                uneven_tokens: 0.0,
                sampled: true,
                ..Self::unpublished(base)
            })
            .into_iter()
            .collect()
    }

    /// `base` with its published figures removed, running at its compute rates.
    fn unpublished(base: Scenario) -> Scenario {
        Scenario {
            efficiency: match base.efficiency {
                EfficiencySource::Fitted | EfficiencySource::FittedToNone { .. } => {
                    EfficiencySource::FittedOn(base.name)
                }
                other => other,
            },
            published_final: 0.0,
            published_fraction: None,
            published_speedup: None,
            published_eplb_fraction: None,
            published_eplb_imbalance: None,
            published_tflops: None,
            ..base
        }
    }

    /// The scenarios (published, spanning domains, decode) whose name contains `text`, ignoring
    /// case; an error naming the known ones if none does.
    pub fn matching(text: &str) -> Result<Vec<Scenario>, BenchError> {
        let wanted = text.to_lowercase();
        let every = || {
            Self::published()
                .into_iter()
                .chain(Self::spanning_domains())
                .chain(Self::decode())
        };
        let found: Vec<Scenario> = every()
            .filter(|scenario| scenario.name.to_lowercase().contains(&wanted))
            .collect();
        if found.is_empty() {
            return Err(BenchError::InvalidProblem {
                source_name: text.to_owned(),
                message: format!(
                    "no such scenario; known: {}",
                    every().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(found)
    }
}

/// The workload of `scenario`, calibrated to its published imbalance.
pub fn workload_config(scenario: &Scenario, run: &RunConfig) -> WorkloadConfig {
    let config = WorkloadConfig {
        ranks: scenario.machine.ranks(),
        experts: scenario.model.routed_experts,
        top_k: scenario.model.top_k,
        layers: run.layers,
        tokens_per_rank: scenario.tokens_per_rank,
        skew: 1.0,
        drift: 0.1,
        regime_switch: 0.1,
        preference: 0.3,
        uneven_tokens: scenario.uneven_tokens,
        sampled: scenario.sampled,
        seed: run.seed,
    };
    // Calibrated on exactly the steps and seed the run replays, so that the run's no-balancing
    // imbalance is the published one.
    let skew = calibrate_skew(
        config,
        scenario.target_imbalance,
        run.warmup_steps,
        run.steps,
    );
    WorkloadConfig { skew, ..config }
}
