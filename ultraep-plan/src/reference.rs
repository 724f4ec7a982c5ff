//! The published reference scenario, so the planner can be checked against the published numbers.
//!
//! UltraEP's authors test their planner at EP64: 64 ranks, 256 experts (4 masters per rank), 2
//! redundant slots per rank, top-8 routing, 8192 tokens per rank, and initial max/mean imbalance of
//! 1.5, 2.0 and 3.0. Their generator gives every expert a fixed popularity: the experts of home rank
//! `r` weigh `(r + 1)^-a`, and inside a rank its `j`-th expert `(j + 1)^-4`, so rank 0 is hottest and
//! one expert dominates each rank. Every token draws its top-8 experts without replacement from that
//! popularity, and `a` is bisected until the initial imbalance hits the target.
//!
//! This module rebuilds that generator from its description (the code is ours). It uses floating
//! point to draw tokens: it makes inputs, it does not plan, and its output is checked by what it
//! measures rather than compared bit for bit across machines.

use crate::{ExpertLayout, LoadMatrix, PlanError, RankDomains};

/// The shape of the reference scenario and the imbalance to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceScenario {
    /// Ranks (all in one domain).
    pub num_ranks: u32,
    /// Master experts per rank.
    pub experts_per_rank: u32,
    /// Redundant slots per rank.
    pub slots_per_rank: u32,
    /// Experts every token is routed to.
    pub top_k: u32,
    /// Tokens every rank routes.
    pub tokens_per_rank: u32,
    /// The initial max/mean rank imbalance to reach.
    pub target_imbalance: f64,
    /// Seed of the token draws.
    pub seed: u64,
}

/// Loads drawn for a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceLoad {
    /// `loads[source][expert]`, row-major.
    pub loads: Vec<u32>,
    /// Ranks (rows).
    pub num_ranks: u32,
    /// Experts (columns).
    pub num_experts: u32,
    /// The skew exponent `a` the bisection settled on.
    pub exponent: f64,
    /// The initial max/mean imbalance of the drawn loads.
    pub imbalance: f64,
}

impl ReferenceLoad {
    /// The loads as a matrix view.
    pub fn matrix(&self) -> LoadMatrix<'_> {
        LoadMatrix::new(
            &self.loads,
            self.num_ranks as usize,
            self.num_experts as usize,
        )
        .expect("a reference load has ranks x experts entries")
    }
}

impl ReferenceScenario {
    /// The published scenario (EP64, 4 masters + 2 slots per rank, top-8, 8192 tokens per rank) at
    /// the given initial imbalance.
    pub fn published(target_imbalance: f64) -> Self {
        Self {
            num_ranks: 64,
            experts_per_rank: 4,
            slots_per_rank: 2,
            top_k: 8,
            tokens_per_rank: 8192,
            target_imbalance,
            seed: 0x00de_ca0f_u64 ^ (target_imbalance * 1000.0) as u64,
        }
    }

    /// Experts in the scenario.
    pub fn num_experts(&self) -> u32 {
        self.num_ranks * self.experts_per_rank
    }

    /// The expert layout: contiguous blocks of `experts_per_rank`.
    pub fn layout(&self) -> Result<ExpertLayout, PlanError> {
        ExpertLayout::contiguous(self.num_ranks, self.experts_per_rank)
    }

    /// One domain holding every rank.
    pub fn domains(&self) -> Result<RankDomains, PlanError> {
        RankDomains::single(self.num_ranks)
    }

    /// Bisects the skew exponent on the full draw (the same random stream every time, so the
    /// imbalance moves smoothly with the exponent) until the initial imbalance is within 0.5% of the
    /// target, and returns that draw.
    pub fn generate(&self) -> ReferenceLoad {
        let (mut low, mut high) = (0.0_f64, 8.0_f64);
        let mut best: Option<(f64, f64, Vec<u32>)> = None;
        for _ in 0..40 {
            let exponent = 0.5 * (low + high);
            let loads = self.draw(exponent);
            let measured = imbalance(&loads, self.num_ranks, self.experts_per_rank);
            let closer = best.as_ref().is_none_or(|(_, b, _)| {
                (measured - self.target_imbalance).abs() < (b - self.target_imbalance).abs()
            });
            if measured < self.target_imbalance {
                low = exponent;
            } else {
                high = exponent;
            }
            if closer {
                best = Some((exponent, measured, loads));
            }
            if (measured / self.target_imbalance - 1.0).abs() < 0.005 {
                break;
            }
        }
        let (exponent, imbalance, loads) = best.unwrap_or_else(|| (0.0, 1.0, self.draw(0.0)));
        ReferenceLoad {
            loads,
            num_ranks: self.num_ranks,
            num_experts: self.num_experts(),
            exponent,
            imbalance,
        }
    }

    /// Every source's per-expert counts when each token picks `top_k` distinct experts.
    fn draw(&self, exponent: f64) -> Vec<u32> {
        let experts = self.num_experts() as usize;
        let weights: Vec<f64> = (0..experts)
            .map(|expert| {
                let rank = (expert / self.experts_per_rank as usize) as f64;
                let within = (expert % self.experts_per_rank as usize) as f64;
                (rank + 1.0).powf(-exponent) * (within + 1.0).powi(-4)
            })
            .collect();
        let table = AliasTable::new(&weights);
        let mut random = SplitMix64(self.seed);
        let mut counts = vec![0u32; self.num_ranks as usize * experts];
        let top_k = (self.top_k as usize).min(experts);
        let mut picked: Vec<usize> = Vec::with_capacity(top_k);
        for row in counts.chunks_mut(experts) {
            for _ in 0..self.tokens_per_rank {
                picked.clear();
                // Drawing again on a repeat is drawing from what is left, renormalised. After many
                // repeats (an extremely skewed popularity) take the heaviest expert not yet picked,
                // so a token always gets `top_k` distinct experts.
                let mut tries = 0;
                while picked.len() < top_k {
                    let expert = if tries < 64 {
                        table.sample(random.next_u64())
                    } else {
                        (0..experts)
                            .filter(|e| !picked.contains(e))
                            .max_by(|a, b| weights[*a].total_cmp(&weights[*b]))
                            .unwrap_or(0)
                    };
                    if picked.contains(&expert) {
                        tries += 1;
                    } else {
                        picked.push(expert);
                        row[expert] += 1;
                        tries = 0;
                    }
                }
            }
        }
        counts
    }
}

/// Walker's alias method (Vose's construction): one random number per weighted draw.
struct AliasTable {
    probability: Vec<f64>,
    alias: Vec<usize>,
}

impl AliasTable {
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut probability = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            probability[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Self { probability, alias }
    }

    /// A draw from 64 random bits: the high half picks a column, the low half the coin.
    fn sample(&self, bits: u64) -> usize {
        let column = (((bits >> 32) * self.probability.len() as u64) >> 32) as usize;
        let coin = (bits & 0xffff_ffff) as f64 / 4_294_967_296.0;
        if coin < self.probability[column] {
            column
        } else {
            self.alias[column]
        }
    }
}

/// Max/mean rank load of per-expert (or per-source-and-expert) counts with contiguous homes.
fn imbalance(counts: &[u32], num_ranks: u32, experts_per_rank: u32) -> f64 {
    let experts = (num_ranks * experts_per_rank) as usize;
    let mut rank_load = vec![0u64; num_ranks as usize];
    for (index, &count) in counts.iter().enumerate() {
        rank_load[(index % experts) / experts_per_rank as usize] += u64::from(count);
    }
    let total: u64 = rank_load.iter().sum();
    let max = rank_load.iter().copied().max().unwrap_or(0);
    if total == 0 {
        1.0
    } else {
        max as f64 * f64::from(num_ranks) / total as f64
    }
}

/// A small, fast, well-mixed generator (Steele, Lea and Flood's SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
