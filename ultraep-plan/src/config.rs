//! The few knobs of the planner.

/// How the planner trades balance against replicas and traffic.
///
/// ```
/// use ultraep_plan::PlanConfig;
/// let config = PlanConfig { min_replica_tokens: 512, ..PlanConfig::default() };
/// assert_eq!(config.tolerance_ppm, 10_000); // 1%
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanConfig {
    /// How far above its domain's lower bound a rank's load may be, in parts per million, before
    /// the planner spends more replicas to lower it. 10 000 (1%) is the published default.
    pub tolerance_ppm: u32,
    /// The smallest quota a replica may get; a smaller piece is not worth copying an expert for.
    /// 1024 tokens is the published default.
    pub min_replica_tokens: u32,
    /// Whether a master with load keeps at least one token (so that its rank computes it and its
    /// gradient stays meaningful). On by default, as published.
    pub master_keeps_token: bool,
    /// How every source's tokens are shared among an expert's instances.
    pub split: SplitMode,
    /// What an instance costs its rank: the planner minimises the largest rank cost under it.
    /// Tokens alone by default ([`InstanceCost::TOKENS`]), as for training and prefill.
    pub cost: InstanceCost,
    /// What copying an expert's weights into a slot costs, for plans that tie on balance to be
    /// told apart by their transfers; `None` (the default) weighs balance alone.
    pub transfer: Option<TransferEstimate>,
}

/// What moving an expert's weights into a replica slot costs, as the planner weighs it: the
/// planner stays pure and knows no topology, so the caller turns its transfer model into one
/// figure.
///
/// With an estimate the planner, once it has found the lowest threshold it can reach, probes that
/// threshold once more preferring cheap transfers: a replica must take at least
/// `copy_cost / per_token` tokens (one that buys less than its copy costs is left out), and a
/// piece that several ranks can take whole goes to the one that receives the fewest copies so far
/// (its port is the freest), before best fit. That probe replaces the first only if it succeeds
/// and its busiest rank is no busier: the estimate never costs balance.
///
/// ```
/// use ultraep_plan::{PlanConfig, TransferEstimate};
/// // A 44 MB expert over a 900 GB/s port takes 49 us; a token's expert GEMMs take about 60 ns.
/// let estimate = TransferEstimate::from_times(48_945_000, 60_000)?;
/// assert_eq!(estimate.copy_cost, 816); // tokens' worth of compute
/// let config = PlanConfig { transfer: Some(estimate), ..PlanConfig::default() };
/// # let _ = config;
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferEstimate {
    /// The cost of one copy in the units of [`PlanConfig::cost`] (tokens' worth of compute under
    /// [`InstanceCost::TOKENS`]).
    pub copy_cost: u64,
}

impl TransferEstimate {
    /// The estimate under the token objective from the picoseconds one copy takes on a receiving
    /// port and the picoseconds one token's expert compute takes (rounded up).
    pub fn from_times(copy_ps: u64, token_ps: u64) -> Result<Self, crate::PlanError> {
        if token_ps == 0 {
            return Err(crate::PlanError::InvalidSetting(
                "a token that costs no time makes every copy infinitely expensive",
            ));
        }
        Ok(Self {
            copy_cost: copy_ps.div_ceil(token_ps),
        })
    }
}

/// The time an expert instance takes on its rank, in integer units: a fixed part for every
/// instance that gets a token (reading its weights) plus a part per token (its FLOPs). A rank's
/// cost is the sum over its instances; the planner minimises the largest.
///
/// Counting tokens ([`InstanceCost::TOKENS`]: one unit per token, nothing fixed) is right when
/// experts see many tokens (training, prefill). In decode an expert sees a handful, and its time
/// is mostly the read of its weights: a replica then costs a whole weight read on its rank, and
/// the fixed part makes the planner replicate only where the tokens it moves pay for that read.
/// With a fixed part of zero every decision is the token objective's.
///
/// ```
/// use ultraep_plan::InstanceCost;
/// // 44 MB of FP8 weights at 4.8 TB/s, 2 x 3 x 7168 x 2048 FLOPs per token at 1 PFLOP/s.
/// let cost = InstanceCost::from_rates(44_040_192, 4_800_000_000_000, 88_080_384, 1_000_000_000_000_000)?;
/// assert_eq!(cost.per_instance, 9_175_040); // picoseconds of one weight read
/// assert_eq!(cost.per_token, 88_080); // picoseconds of one token's FLOPs
/// // A weight read is worth about 104 tokens: below that, a replica costs more than it saves.
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceCost {
    /// Units every token adds to its instance's rank (at least 1).
    pub per_token: u32,
    /// Units every instance with at least one token adds to its rank.
    pub per_instance: u64,
}

impl InstanceCost {
    /// One unit per token and nothing fixed: the token-count objective.
    pub const TOKENS: Self = Self {
        per_token: 1,
        per_instance: 0,
    };

    /// Costs in picoseconds from an expert's weight bytes and the device's memory bandwidth
    /// (bytes per second), and its FLOPs per token and the FLOP rate its GEMMs reach (per
    /// second). Rounded to the nearest picosecond, a token at least one.
    pub fn from_rates(
        weight_bytes: u64,
        memory_bytes_per_second: u64,
        flops_per_token: u64,
        flops_per_second: u64,
    ) -> Result<Self, crate::PlanError> {
        if memory_bytes_per_second == 0 || flops_per_second == 0 {
            return Err(crate::PlanError::InvalidSetting(
                "a memory bandwidth and a FLOP rate of zero take forever",
            ));
        }
        let picoseconds = |amount: u64, rate: u64| -> u64 {
            let scaled = u128::from(amount) * 1_000_000_000_000;
            let rate = u128::from(rate);
            u64::try_from((scaled + rate / 2) / rate).unwrap_or(u64::MAX)
        };
        let per_token = picoseconds(flops_per_token, flops_per_second).max(1);
        Ok(Self {
            per_token: u32::try_from(per_token).map_err(|_| {
                crate::PlanError::InvalidSetting("a token's cost above 2^32 picoseconds")
            })?,
            per_instance: picoseconds(weight_bytes, memory_bytes_per_second),
        })
    }

    /// The same costs in the smallest units: both parts divided by their greatest common
    /// divisor. Plans depend only on the ratio of the parts, not on the unit of time: the
    /// planner plans with these, so a fixed part of zero is exactly the token objective.
    ///
    /// ```
    /// use ultraep_plan::InstanceCost;
    /// let cost = InstanceCost { per_token: 88, per_instance: 0 };
    /// assert_eq!(cost.normalized(), InstanceCost::TOKENS);
    /// let cost = InstanceCost { per_token: 6, per_instance: 4_000 };
    /// assert_eq!(cost.normalized(), InstanceCost { per_token: 3, per_instance: 2_000 });
    /// ```
    pub fn normalized(&self) -> Self {
        let per_token = u64::from(self.per_token.max(1));
        let (mut a, mut b) = (per_token, self.per_instance);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        Self {
            per_token: (per_token / a) as u32,
            per_instance: self.per_instance / a,
        }
    }

    /// The cost of an instance taking `tokens` (nothing without a token).
    pub fn of(&self, tokens: u64) -> u64 {
        if tokens == 0 {
            0
        } else {
            self.per_instance
                .saturating_add(tokens.saturating_mul(u64::from(self.per_token)))
        }
    }
}

impl Default for InstanceCost {
    fn default() -> Self {
        Self::TOKENS
    }
}

/// How the planner splits every source rank's tokens for an expert among the expert's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitMode {
    /// Tokens that already sit on an instance's rank fill that instance first (they never leave
    /// the GPU); the rest is shared in proportion. The default.
    LocalityAware,
    /// Every source is shared in proportion to the instances' quotas, ignoring where tokens are.
    Proportional,
    /// Tokens that already sit on an instance's rank fill that instance first; the rest of every
    /// source, in rank order, fills the instances in order (master first, then replicas by
    /// rank), each up to what remains of its quota. No division, so it costs a fraction of the
    /// proportional split, and a source sends to one or two instances of an expert rather than
    /// to all of them: fewer, larger messages in the dispatch.
    Contiguous,
    /// No split: the plan carries instances, quotas and loads only, for a consumer that splits
    /// tokens itself (and for measuring the planning step alone).
    None,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            tolerance_ppm: 10_000,
            min_replica_tokens: 1024,
            master_keeps_token: true,
            split: SplitMode::LocalityAware,
            cost: InstanceCost::TOKENS,
            transfer: None,
        }
    }
}
