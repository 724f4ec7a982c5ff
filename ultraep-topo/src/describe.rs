//! A human description of a topology: what `ultraep topo` prints and the preset snapshots record.

use std::fmt;

use crate::units::trim_decimal;
use crate::{RankLinks, Topology, rank_list};

impl fmt::Display for Topology {
    /// One header line, the accelerator, one line per domain, then one line per rank whose links
    /// differ from its domain's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} ranks in {} scale-up domain{}",
            self.name,
            self.rank_count(),
            self.domain_count(),
            if self.domain_count() == 1 { "" } else { "s" }
        )?;
        if let Some(gpu) = &self.accelerator {
            writeln!(
                f,
                "accelerator: {}: {} TFLOP/s dense BF16, {} memory, {} GB",
                gpu.name,
                trim_decimal(gpu.dense_bf16_gflops as f64 / 1e3),
                gpu.memory_bandwidth,
                trim_decimal(gpu.memory_bytes as f64 / 1e9),
            )?;
        }
        for (index, domain) in self.domains.iter().enumerate() {
            writeln!(
                f,
                "domain {index} \"{}\": {} ranks ({}); {}",
                domain.name,
                domain.ranks.len(),
                rank_list::format(domain.ranks.iter().map(|rank| rank.0)),
                LinksSummary(&domain.links),
            )?;
        }
        for (rank, links) in self.rank_links.iter().enumerate() {
            let domain = &self.domains[self.rank_domains[rank].index()];
            if *links != domain.links {
                writeln!(f, "rank {rank} overrides: {}", LinksSummary(links))?;
            }
        }
        Ok(())
    }
}

struct LinksSummary<'a>(&'a RankLinks);

impl fmt::Display for LinksSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let links = self.0;
        write!(
            f,
            "scale-up {} out, {} in, {} latency; scale-out {}, {} latency",
            links.scale_up_egress,
            links.scale_up_ingress,
            links.scale_up_latency,
            links.scale_out,
            links.scale_out_latency,
        )
    }
}
