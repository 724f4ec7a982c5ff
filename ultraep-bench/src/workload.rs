//! Synthetic router loads that behave like real routers: skewed, drifting, source-dependent.
//!
//! Every MoE layer has its own expert popularity: a Zipf-like law `(i + 1)^-skew` over a random
//! ordering of the experts, so the hot experts of a layer land on arbitrary ranks. Over steps the
//! log-popularity of every expert wanders around that law (a mean-reverting walk: each step keeps
//! 80% of its deviation and adds normal noise of `drift`), and with probability `regime_switch`
//! per step a layer reshuffles which experts are hot: history goes stale. The walk reverts so that
//! the imbalance stays where it was calibrated instead of growing with the run. Every
//! source rank multiplies the popularity by its own fixed preferences (log-normal, `preference`),
//! so different ranks favour different experts. Training microbatches give every rank the same
//! token count; prefill batches give ranks uneven counts (log-normal, `uneven_tokens`).
//!
//! Per source rank, the expected number of its tokens that pick each expert is computed rather than
//! drawn: with top-k routing without replacement an expert of weight `w` is picked with probability
//! about `1 - exp(-lambda w)`, `lambda` chosen so the probabilities sum to `k` (the Poisson
//! approximation of sampling without replacement). Counts are rounded by largest remainder so that
//! every token picks exactly `k` experts. This is fast enough to regenerate every layer of every
//! step, and the drift supplies the variation a draw would.
//!
//! [`calibrate_skew`] bisects the skew until the no-balancing max/mean rank imbalance, averaged
//! over the layers of the first steps, matches a target (the published figure of a scenario).

use crate::random::Random;

/// The share of its deviation from the Zipf law that an expert's log-popularity keeps per step.
const REVERSION: f64 = 0.8;

/// The shape and dynamics of a synthetic workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadConfig {
    /// Source ranks (the expert-parallel group).
    pub ranks: u32,
    /// Routed experts, homed in contiguous balanced blocks.
    pub experts: u32,
    /// Experts every token picks.
    pub top_k: u32,
    /// MoE layers generated per step.
    pub layers: u32,
    /// Mean tokens per rank per microbatch.
    pub tokens_per_rank: u32,
    /// Zipf exponent of the expert popularity.
    pub skew: f64,
    /// Standard deviation of the per-step random walk of log-popularity.
    pub drift: f64,
    /// Probability per step and layer that the hot experts change.
    pub regime_switch: f64,
    /// Standard deviation of every source rank's log-normal preferences.
    pub preference: f64,
    /// Standard deviation of the log-normal token counts per rank (0 for training).
    pub uneven_tokens: f64,
    /// Whether every count is drawn (each expert's picks a binomial draw around its expectation)
    /// rather than the expectation rounded: the noise of a real microbatch, which matters when
    /// few tokens meet many experts (decode).
    pub sampled: bool,
    /// Seed of every random choice.
    pub seed: u64,
}

/// A stream of steps of loads.
#[derive(Debug, Clone)]
pub struct Workload {
    config: WorkloadConfig,
    random: Random,
    /// The Zipf log-popularity of every expert, per layer.
    base: Vec<Vec<f64>>,
    /// The current deviation from it, per layer.
    deviation: Vec<Vec<f64>>,
    /// Log-preference of every (source, expert), per layer.
    preference: Vec<Vec<f64>>,
    /// Draws of the sampled counts, apart from `random` so that the popularity's walk is the
    /// same with and without sampling.
    draws: Random,
}

impl Workload {
    /// A workload at step 0.
    pub fn new(config: WorkloadConfig) -> Self {
        let mut random = Random::new(config.seed);
        let experts = config.experts as usize;
        let base = (0..config.layers)
            .map(|_| zipf_log_popularity(&mut random, experts, config.skew))
            .collect();
        // Start from the walk's stationary spread, so that the first steps look like the rest.
        let stationary = config.drift / (1.0 - REVERSION * REVERSION).sqrt();
        let deviation = (0..config.layers)
            .map(|_| (0..experts).map(|_| stationary * random.normal()).collect())
            .collect();
        let preference = (0..config.layers)
            .map(|_| {
                (0..config.ranks as usize * experts)
                    .map(|_| config.preference * random.normal())
                    .collect()
            })
            .collect();
        Self {
            config,
            random,
            base,
            deviation,
            preference,
            draws: Random::new(config.seed ^ 0x5eed_d4a3),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// The loads of the next step: one `ranks x experts` row-major matrix per layer.
    pub fn next_step(&mut self) -> Vec<Vec<u32>> {
        let config = self.config;
        let experts = config.experts as usize;
        let tokens = self.token_counts();
        let mut layers = Vec::with_capacity(config.layers as usize);
        for layer in 0..config.layers as usize {
            if self.random.uniform() < config.regime_switch {
                self.base[layer] = zipf_log_popularity(&mut self.random, experts, config.skew);
            }
            for value in &mut self.deviation[layer] {
                *value = REVERSION * *value + config.drift * self.random.normal();
            }
            let mut loads = vec![0u32; config.ranks as usize * experts];
            let mut weights = vec![0.0; experts];
            for (source, row) in loads.chunks_mut(experts).enumerate() {
                let preference = &self.preference[layer][source * experts..(source + 1) * experts];
                for (((weight, base), deviation), preference) in weights
                    .iter_mut()
                    .zip(&self.base[layer])
                    .zip(&self.deviation[layer])
                    .zip(preference)
                {
                    *weight = (base + deviation + preference).exp();
                }
                route(&weights, config.top_k, tokens[source], row);
                if config.sampled {
                    sample(&mut self.draws, config.top_k, tokens[source], row);
                }
            }
            layers.push(loads);
        }
        layers
    }

    /// Tokens every rank routes this step.
    fn token_counts(&mut self) -> Vec<u32> {
        let config = self.config;
        if config.uneven_tokens == 0.0 {
            return vec![config.tokens_per_rank; config.ranks as usize];
        }
        let raw: Vec<f64> = (0..config.ranks)
            .map(|_| (config.uneven_tokens * self.random.normal()).exp())
            .collect();
        let mean = raw.iter().sum::<f64>() / raw.len() as f64;
        raw.iter()
            .map(|r| {
                ((r / mean) * f64::from(config.tokens_per_rank))
                    .round()
                    .max(1.0) as u32
            })
            .collect()
    }
}

/// Zipf log-popularity over a random ordering of the experts.
fn zipf_log_popularity(random: &mut Random, experts: usize, skew: f64) -> Vec<f64> {
    let order = random.permutation(experts);
    let mut popularity = vec![0.0; experts];
    for (position, &expert) in order.iter().enumerate() {
        popularity[expert] = -skew * ((position + 1) as f64).ln();
    }
    popularity
}

/// Expected counts of `tokens` tokens each picking `top_k` distinct experts by `weights`, rounded
/// so that they sum to exactly `tokens * top_k` and no expert gets more than `tokens`.
/// Replaces the expected counts in `row` by draws: each expert's count a binomial draw of
/// `tokens` tokens with its expected share as the probability (normal where the variance is
/// large, exact Bernoulli trials where it is small), then nudged, largest first, so that every
/// token still picks exactly `top_k` experts.
fn sample(random: &mut Random, top_k: u32, tokens: u32, row: &mut [u32]) {
    let n = f64::from(tokens.max(1));
    for count in row.iter_mut() {
        let p = (f64::from(*count) / n).clamp(0.0, 1.0);
        let variance = n * p * (1.0 - p);
        *count = if variance >= 25.0 {
            (n * p + variance.sqrt() * random.normal())
                .round()
                .clamp(0.0, n) as u32
        } else {
            (0..tokens).filter(|_| random.uniform() < p).count() as u32
        };
    }
    let total = u64::from(tokens) * u64::from(top_k.min(row.len() as u32));
    let mut sum: u64 = row.iter().map(|&c| u64::from(c)).sum();
    while sum > total {
        if let Some(largest) = (0..row.len()).max_by_key(|&e| (row[e], std::cmp::Reverse(e))) {
            row[largest] -= 1;
            sum -= 1;
        }
    }
    while sum < total {
        let below = (0..row.len()).filter(|&e| row[e] < tokens);
        match below.max_by_key(|&e| (row[e], std::cmp::Reverse(e))) {
            Some(expert) => {
                row[expert] += 1;
                sum += 1;
            }
            None => break,
        }
    }
}

fn route(weights: &[f64], top_k: u32, tokens: u32, row: &mut [u32]) {
    let k = f64::from(top_k.min(weights.len() as u32));
    // Solve sum(1 - exp(-lambda w)) = k by Newton's method from lambda = 0: the sum is concave and
    // increasing in lambda, so the iterates rise monotonically to the root.
    let mut lambda = 0.0_f64;
    for _ in 0..100 {
        let (mut value, mut slope) = (-k, 0.0);
        for w in weights {
            let e = (-lambda * w).exp();
            value += 1.0 - e;
            slope += w * e;
        }
        if slope <= 0.0 {
            break;
        }
        let step = -value / slope;
        lambda += step;
        if step.abs() <= 1e-12 * lambda.abs() {
            break;
        }
    }
    let total = u64::from(tokens) * k as u64;
    let mut remainders: Vec<(f64, usize)> = Vec::with_capacity(weights.len());
    let mut assigned = 0u64;
    for (expert, w) in weights.iter().enumerate() {
        let expected = f64::from(tokens) * (1.0 - (-lambda * w).exp());
        let whole = expected.floor().min(f64::from(tokens));
        row[expert] = whole as u32;
        assigned += whole as u64;
        remainders.push((expected - whole, expert));
    }
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut index = 0;
    while assigned < total && !remainders.is_empty() {
        let expert = remainders[index % remainders.len()].1;
        if row[expert] < tokens {
            row[expert] += 1;
            assigned += 1;
        }
        index += 1;
    }
}

/// The no-balancing max/mean rank imbalance of one layer's loads with contiguous homes.
pub fn imbalance(loads: &[u32], ranks: u32, experts: u32) -> f64 {
    let mut rank_load = vec![0u64; ranks as usize];
    for row in loads.chunks(experts as usize) {
        for (expert, &count) in row.iter().enumerate() {
            rank_load[home(expert as u32, ranks, experts) as usize] += u64::from(count);
        }
    }
    let total: u64 = rank_load.iter().sum();
    if total == 0 {
        return 1.0;
    }
    let max = rank_load.iter().copied().max().unwrap_or(0);
    max as f64 * f64::from(ranks) / total as f64
}

/// The home of `expert` in contiguous blocks whose sizes differ by at most one (larger first), as
/// `ultraep_plan::ExpertLayout::balanced_blocks` places them.
pub fn home(expert: u32, ranks: u32, experts: u32) -> u32 {
    let base = experts / ranks;
    let larger = experts % ranks;
    let boundary = larger * (base + 1);
    if expert < boundary {
        expert / (base + 1)
    } else {
        larger + (expert - boundary) / base.max(1)
    }
}

/// Mean no-balancing imbalance over the layers of `steps` steps after the first `skip`.
pub fn mean_imbalance(config: WorkloadConfig, skip: u32, steps: u32) -> f64 {
    let mut workload = Workload::new(config);
    for _ in 0..skip {
        workload.next_step();
    }
    let mut sum = 0.0;
    let mut count = 0;
    for _ in 0..steps {
        for loads in workload.next_step() {
            sum += imbalance(&loads, config.ranks, config.experts);
            count += 1;
        }
    }
    sum / f64::from(count.max(1))
}

/// The skew whose mean no-balancing imbalance over `steps` steps after the first `skip` is
/// `target` (bisected; every evaluation uses the same seed, so the imbalance moves smoothly with
/// the skew).
pub fn calibrate_skew(config: WorkloadConfig, target: f64, skip: u32, steps: u32) -> f64 {
    let (mut low, mut high) = (0.0_f64, 4.0_f64);
    for _ in 0..20 {
        let skew = 0.5 * (low + high);
        if mean_imbalance(WorkloadConfig { skew, ..config }, skip, steps) < target {
            low = skew;
        } else {
            high = skew;
        }
    }
    0.5 * (low + high)
}
