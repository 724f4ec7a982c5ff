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
        }
    }
}
