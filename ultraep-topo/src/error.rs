//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong when building, reading or querying a topology.
///
/// Messages name the offending domain, rank or key so that a person can fix a topology file from the
/// message alone.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum TopoError {
    /// The topology has no domain (and so no rank).
    #[error("the topology is empty: it needs at least one domain with at least one rank")]
    Empty,
    /// A domain lists no rank.
    #[error("domain \"{domain}\" has no ranks")]
    EmptyDomain {
        /// The domain's name.
        domain: String,
    },
    /// Two domains share a name.
    #[error("two domains are named \"{name}\"; domain names must be unique")]
    DuplicateDomainName {
        /// The repeated name.
        name: String,
    },
    /// A domain's name is empty.
    #[error("domain number {index} has an empty name")]
    EmptyDomainName {
        /// The position of the domain in the topology.
        index: usize,
    },
    /// A rank appears in more than one domain, or twice in one.
    #[error("rank {rank} is listed in domain \"{first}\" and again in domain \"{second}\"")]
    RankListedTwice {
        /// The rank.
        rank: u32,
        /// The first domain that lists it.
        first: String,
        /// The domain that lists it again (may be the same one).
        second: String,
    },
    /// Ranks must be numbered 0..N without gaps; this one is in no domain.
    #[error("rank {rank} is in no domain (the domains list {rank_count} ranks, so ranks 0 to {} must all appear)", rank_count - 1)]
    RankWithoutDomain {
        /// The missing rank.
        rank: u32,
        /// How many ranks the domains list together.
        rank_count: u32,
    },
    /// A rank number is not in the topology.
    #[error("rank {rank} does not exist (the topology has ranks 0 to {})", rank_count.saturating_sub(1))]
    UnknownRank {
        /// The rank asked for.
        rank: u32,
        /// How many ranks the topology has.
        rank_count: u32,
    },
    /// A domain number is not in the topology.
    #[error("domain {domain} does not exist (the topology has {domain_count} domains)")]
    UnknownDomain {
        /// The domain asked for.
        domain: u32,
        /// How many domains the topology has.
        domain_count: u32,
    },
    /// Links of one rank are overridden twice.
    #[error("the links of rank {rank} are overridden more than once")]
    RankOverriddenTwice {
        /// The rank.
        rank: u32,
    },
    /// A figure in a topology file is out of range (zero or negative bandwidth, negative latency,
    /// not a number, absurdly large).
    #[error("{key} of {location} is {value}, but it must be {requirement}")]
    InvalidFigure {
        /// The file key, e.g. `scale_up_egress_gb_per_s`.
        key: &'static str,
        /// Where it was found, e.g. `domain "rack0"`.
        location: String,
        /// The value as written.
        value: f64,
        /// What the value must be, e.g. "positive and at most 1000000 GB/s".
        requirement: &'static str,
    },
    /// A link figure is given nowhere for a domain.
    #[error("{key} is not given for {location}: set it in [links] or in the domain's links")]
    MissingFigure {
        /// The file key.
        key: &'static str,
        /// Where it was needed.
        location: String,
    },
    /// A rank list such as `"0-7,16-23"` does not parse.
    #[error("rank list \"{text}\" of {location} is malformed: {reason}")]
    InvalidRankList {
        /// The text as written.
        text: String,
        /// Where it was found.
        location: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The topology file is not valid TOML or does not have the expected keys.
    #[error("topology file: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },
    /// No preset has this name.
    #[error("unknown topology preset \"{name}\"; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A preset was asked for zero racks or nodes, or so many that rank numbers overflow.
    #[error("a {preset} topology needs between 1 and {max} {unit}s, not {count}")]
    InvalidPresetCount {
        /// The preset's name.
        preset: &'static str,
        /// "rack" or "node".
        unit: &'static str,
        /// The count asked for.
        count: u32,
        /// The largest count allowed.
        max: u32,
    },
}
