//! The topology file: a TOML description of a cluster that people write by hand.
//!
//! ```toml
//! name = "two HGX H100 nodes and a smaller one"
//!
//! [accelerator]              # optional: the GPU at every rank
//! name = "H100 SXM"
//! dense_bf16_tflops = 989
//! memory_tb_per_s = 3.35
//! memory_gb = 80
//!
//! [links]                    # defaults for every domain; each domain may override any of them
//! scale_up_egress_gb_per_s = 450
//! scale_up_ingress_gb_per_s = 450
//! scale_up_latency_us = 1
//! scale_out_gb_per_s = 50
//! scale_out_latency_us = 3
//!
//! [[domain]]
//! name = "node0"
//! ranks = "0-7"              # a list such as "0-3,8-11", or an array such as [0, 1, 2]
//!
//! [[domain]]
//! name = "node1"
//! ranks = [8, 9, 10, 11]
//! links = { scale_out_gb_per_s = 25 }
//!
//! [[rank]]                   # optional: one rank whose links differ from its domain's
//! id = 3
//! links = { scale_up_egress_gb_per_s = 225 }
//! ```
//!
//! Bandwidths are decimal GB/s per direction, latencies microseconds. Ranks must be numbered from 0
//! with no gaps, each in exactly one domain. Unknown keys are errors, so a misspelt key is never
//! silently ignored. This module only converts between text and [`Topology`]: reading and writing
//! files is the caller's business (the `ultraep topo` command does it).

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    Accelerator, Bandwidth, Nanos, RankLinks, TopoError, Topology, TopologyBuilder, rank_list,
};

/// Bandwidths above a petabyte per second are refused as typos; below that, converting to GB/s and
/// back is exact.
const MAX_GB_PER_S: f64 = 1e6;
/// Latencies above a thousand seconds are refused as typos.
const MAX_LATENCY_US: f64 = 1e9;
/// Compute figures above an exaFLOP/s per GPU are refused as typos.
const MAX_TFLOPS: f64 = 1e6;
/// Memory above a petabyte per GPU is refused as a typo.
const MAX_MEMORY_GB: f64 = 1e6;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accelerator: Option<AcceleratorEntry>,
    #[serde(default, skip_serializing_if = "LinksEntry::is_empty")]
    links: LinksEntry,
    #[serde(default, rename = "domain")]
    domains: Vec<DomainEntry>,
    #[serde(default, rename = "rank", skip_serializing_if = "Vec::is_empty")]
    ranks: Vec<RankEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceleratorEntry {
    name: String,
    dense_bf16_tflops: f64,
    memory_tb_per_s: f64,
    memory_gb: f64,
}

/// Link figures, any of which may be left to a wider default.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_up_egress_gb_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_up_ingress_gb_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_up_latency_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_out_gb_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_out_latency_us: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainEntry {
    name: String,
    ranks: RankListEntry,
    #[serde(default, skip_serializing_if = "LinksEntry::is_empty")]
    links: LinksEntry,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankEntry {
    id: u32,
    links: LinksEntry,
}

/// A rank list as written: a string such as `"0-7,16"` or an array of numbers.
#[derive(Debug)]
enum RankListEntry {
    Text(String),
    Numbers(Vec<u32>),
}

impl Topology {
    /// Reads a topology from the text of a topology file (see the module docs for the format).
    ///
    /// ```
    /// let topo = ultraep_topo::Topology::from_toml_str(r#"
    ///     name = "one HGX node"
    ///     [links]
    ///     scale_up_egress_gb_per_s = 450
    ///     scale_up_ingress_gb_per_s = 450
    ///     scale_up_latency_us = 1
    ///     scale_out_gb_per_s = 50
    ///     scale_out_latency_us = 3
    ///     [[domain]]
    ///     name = "node0"
    ///     ranks = "0-7"
    /// "#)?;
    /// assert_eq!(topo.rank_count(), 8);
    /// # Ok::<(), ultraep_topo::TopoError>(())
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Topology, TopoError> {
        let file: TopologyFile =
            toml::from_str(text).map_err(|error| syntax_error(text, &error))?;
        let mut builder = TopologyBuilder::new(file.name);
        if let Some(entry) = file.accelerator {
            builder = builder.accelerator(entry.to_accelerator()?);
        }
        let mut total_ranks: u64 = 0;
        for domain in file.domains {
            let location = format!("domain \"{}\"", domain.name);
            let links = domain.links.over(&file.links).resolve(&location)?;
            let ranks = domain.ranks.expand(&location)?;
            total_ranks += ranks.len() as u64;
            if total_ranks > u64::from(rank_list::MAX_RANKS) {
                return Err(TopoError::InvalidRankList {
                    text: domain.ranks.to_string(),
                    location,
                    reason: "the domains together name more ranks than a topology may have (2^20)",
                });
            }
            builder = builder.domain(domain.name, ranks, links);
        }
        // Rank overrides sit on top of their domain's links, which are known once the domains are
        // checked; the overrides are then checked by a second build.
        let domains_only = builder.clone().build()?;
        for entry in &file.ranks {
            let base = domains_only.links(crate::RankId(entry.id))?;
            let location = format!("rank {}", entry.id);
            let links = entry
                .links
                .over(&LinksEntry::from_links(base))
                .resolve(&location)?;
            builder = builder.rank_links(entry.id, links);
        }
        builder.build()
    }

    /// Writes the topology as a topology file that [`Topology::from_toml_str`] reads back unchanged.
    pub fn to_toml_string(&self) -> Result<String, TopoError> {
        // When every domain has the same links (every preset does), say them once under [links].
        let first = &self.domains[0].links;
        let shared = self.domains.iter().all(|domain| domain.links == *first);
        let domains = self
            .domains
            .iter()
            .map(|domain| DomainEntry {
                name: domain.name.clone(),
                ranks: RankListEntry::Text(rank_list::format(
                    domain.ranks.iter().map(|rank| rank.0),
                )),
                links: if shared {
                    LinksEntry::default()
                } else {
                    LinksEntry::from_links(&domain.links)
                },
            })
            .collect();
        let ranks = self
            .rank_links
            .iter()
            .enumerate()
            .filter_map(|(rank, links)| {
                let domain = &self.domains[self.rank_domains[rank].index()];
                (*links != domain.links).then(|| RankEntry {
                    id: rank as u32,
                    links: LinksEntry::from_links(links)
                        .without(&LinksEntry::from_links(&domain.links)),
                })
            })
            .collect();
        let file = TopologyFile {
            name: self.name.clone(),
            accelerator: self
                .accelerator
                .as_ref()
                .map(AcceleratorEntry::from_accelerator),
            links: if shared {
                LinksEntry::from_links(first)
            } else {
                LinksEntry::default()
            },
            domains,
            ranks,
        };
        toml::to_string(&file).map_err(|error| TopoError::Syntax {
            message: format!("could not write the topology: {error}"),
        })
    }
}

impl AcceleratorEntry {
    fn to_accelerator(&self) -> Result<Accelerator, TopoError> {
        let location = format!("accelerator \"{}\"", self.name);
        let requirement = "a positive number, at most 1000000";
        let dense_bf16_gflops = whole_units(
            self.dense_bf16_tflops,
            1e3,
            MAX_TFLOPS,
            "dense_bf16_tflops",
            &location,
            requirement,
        )?;
        let memory_bytes = whole_units(
            self.memory_gb,
            1e9,
            MAX_MEMORY_GB,
            "memory_gb",
            &location,
            requirement,
        )?;
        let memory_bandwidth = bandwidth(
            self.memory_tb_per_s * 1e3,
            "memory_tb_per_s",
            &location,
            "a positive number of TB/s, at most 1000",
        )?;
        Ok(Accelerator {
            name: self.name.clone(),
            dense_bf16_gflops,
            memory_bandwidth,
            memory_bytes,
        })
    }

    fn from_accelerator(accelerator: &Accelerator) -> Self {
        Self {
            name: accelerator.name.clone(),
            dense_bf16_tflops: accelerator.dense_bf16_gflops as f64 / 1e3,
            memory_tb_per_s: accelerator.memory_bandwidth.get() as f64 / 1e12,
            memory_gb: accelerator.memory_bytes as f64 / 1e9,
        }
    }
}

impl LinksEntry {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These figures, with the gaps filled from `base`.
    fn over(&self, base: &LinksEntry) -> LinksEntry {
        LinksEntry {
            scale_up_egress_gb_per_s: self
                .scale_up_egress_gb_per_s
                .or(base.scale_up_egress_gb_per_s),
            scale_up_ingress_gb_per_s: self
                .scale_up_ingress_gb_per_s
                .or(base.scale_up_ingress_gb_per_s),
            scale_up_latency_us: self.scale_up_latency_us.or(base.scale_up_latency_us),
            scale_out_gb_per_s: self.scale_out_gb_per_s.or(base.scale_out_gb_per_s),
            scale_out_latency_us: self.scale_out_latency_us.or(base.scale_out_latency_us),
        }
    }

    /// These figures, less those equal to `base`'s: what an override must say.
    fn without(&self, base: &LinksEntry) -> LinksEntry {
        fn differing(value: Option<f64>, base: Option<f64>) -> Option<f64> {
            if value == base { None } else { value }
        }
        LinksEntry {
            scale_up_egress_gb_per_s: differing(
                self.scale_up_egress_gb_per_s,
                base.scale_up_egress_gb_per_s,
            ),
            scale_up_ingress_gb_per_s: differing(
                self.scale_up_ingress_gb_per_s,
                base.scale_up_ingress_gb_per_s,
            ),
            scale_up_latency_us: differing(self.scale_up_latency_us, base.scale_up_latency_us),
            scale_out_gb_per_s: differing(self.scale_out_gb_per_s, base.scale_out_gb_per_s),
            scale_out_latency_us: differing(self.scale_out_latency_us, base.scale_out_latency_us),
        }
    }

    fn from_links(links: &RankLinks) -> Self {
        let gb_per_s = |bandwidth: Bandwidth| Some(bandwidth.get() as f64 / 1e9);
        let micros = |latency: Nanos| Some(latency.get() as f64 / 1e3);
        Self {
            scale_up_egress_gb_per_s: gb_per_s(links.scale_up_egress),
            scale_up_ingress_gb_per_s: gb_per_s(links.scale_up_ingress),
            scale_up_latency_us: micros(links.scale_up_latency),
            scale_out_gb_per_s: gb_per_s(links.scale_out),
            scale_out_latency_us: micros(links.scale_out_latency),
        }
    }

    fn resolve(&self, location: &str) -> Result<RankLinks, TopoError> {
        const BANDWIDTH: &str = "a positive number of GB/s, at most 1000000";
        let required = |value: Option<f64>, key: &'static str| {
            value.ok_or_else(|| TopoError::MissingFigure {
                key,
                location: location.to_owned(),
            })
        };
        let link = |value: Option<f64>, key: &'static str| {
            bandwidth(required(value, key)?, key, location, BANDWIDTH)
        };
        let delay =
            |value: Option<f64>, key: &'static str| latency(required(value, key)?, key, location);
        Ok(RankLinks {
            scale_up_egress: link(self.scale_up_egress_gb_per_s, "scale_up_egress_gb_per_s")?,
            scale_up_ingress: link(self.scale_up_ingress_gb_per_s, "scale_up_ingress_gb_per_s")?,
            scale_up_latency: delay(self.scale_up_latency_us, "scale_up_latency_us")?,
            scale_out: link(self.scale_out_gb_per_s, "scale_out_gb_per_s")?,
            scale_out_latency: delay(self.scale_out_latency_us, "scale_out_latency_us")?,
        })
    }
}

/// Converts a figure in GB/s into a [`Bandwidth`], refusing zero, negative and absurd values.
fn bandwidth(
    gb_per_s: f64,
    key: &'static str,
    location: &str,
    requirement: &'static str,
) -> Result<Bandwidth, TopoError> {
    let bytes = whole_units(gb_per_s, 1e9, MAX_GB_PER_S, key, location, requirement)?;
    Bandwidth::bytes_per_second(bytes).ok_or_else(|| invalid(gb_per_s, key, location, requirement))
}

/// Converts a latency in microseconds into [`Nanos`], refusing negative and absurd values.
fn latency(micros: f64, key: &'static str, location: &str) -> Result<Nanos, TopoError> {
    if !(0.0..=MAX_LATENCY_US).contains(&micros) {
        return Err(invalid(
            micros,
            key,
            location,
            "zero or a positive number of microseconds, at most 1000000000",
        ));
    }
    Ok(Nanos::new((micros * 1e3).round() as u64))
}

/// `value * scale` rounded to a whole number, for a positive `value` no larger than `max`.
fn whole_units(
    value: f64,
    scale: f64,
    max: f64,
    key: &'static str,
    location: &str,
    requirement: &'static str,
) -> Result<u64, TopoError> {
    // Written so that NaN fails the test as well.
    if !(value > 0.0 && value <= max) {
        return Err(invalid(value, key, location, requirement));
    }
    let units = (value * scale).round() as u64;
    if units == 0 {
        return Err(invalid(value, key, location, requirement));
    }
    Ok(units)
}

fn invalid(value: f64, key: &'static str, location: &str, requirement: &'static str) -> TopoError {
    TopoError::InvalidFigure {
        key,
        location: location.to_owned(),
        value,
        requirement,
    }
}

impl RankListEntry {
    fn expand(&self, location: &str) -> Result<Vec<u32>, TopoError> {
        match self {
            RankListEntry::Numbers(ranks) => Ok(ranks.clone()),
            RankListEntry::Text(text) => {
                rank_list::parse(text).map_err(|reason| TopoError::InvalidRankList {
                    text: text.clone(),
                    location: location.to_owned(),
                    reason,
                })
            }
        }
    }
}

impl fmt::Display for RankListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankListEntry::Text(text) => f.write_str(text),
            RankListEntry::Numbers(ranks) => write!(f, "{ranks:?}"),
        }
    }
}

impl Serialize for RankListEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RankListEntry::Text(text) => serializer.serialize_str(text),
            RankListEntry::Numbers(ranks) => ranks.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RankListEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RankListVisitor;

        impl<'de> Visitor<'de> for RankListVisitor {
            type Value = RankListEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rank list such as \"0-7,16\" or an array of rank numbers")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RankListEntry, E> {
                Ok(RankListEntry::Text(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RankListEntry, A::Error> {
                let mut ranks = Vec::new();
                while let Some(rank) = seq.next_element::<u32>()? {
                    if ranks.len() >= rank_list::MAX_RANKS as usize {
                        return Err(de::Error::custom(
                            "the array names more ranks than a topology may have (2^20)",
                        ));
                    }
                    ranks.push(rank);
                }
                Ok(RankListEntry::Numbers(ranks))
            }
        }

        deserializer.deserialize_any(RankListVisitor)
    }
}

/// The parser's error as one line, with where it is (line and column, in bytes) and none of the
/// offending text: a file with a megabyte-long line gets a short message.
fn syntax_error(text: &str, error: &toml::de::Error) -> TopoError {
    let words: Vec<&str> = error.message().split_whitespace().collect();
    let mut message = words.join(" ");
    if message.chars().count() > MESSAGE_LIMIT {
        message = message.chars().take(MESSAGE_LIMIT).collect::<String>() + "...";
    }
    if let Some(span) = error.span() {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        message = format!("line {line}, column {column}: {message}");
    }
    TopoError::Syntax { message }
}

/// The longest parser message kept, in characters.
const MESSAGE_LIMIT: usize = 200;
