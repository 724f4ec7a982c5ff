//! `ultraep topo`: show a preset or a topology file, and write topology files.

use std::path::{Path, PathBuf};

use clap::Args;
use ultraep_topo::{Preset, Topology};

use ultraep_bench::BenchError;

/// Arguments of `ultraep topo`.
#[derive(Debug, Args)]
pub struct TopoArgs {
    /// A preset: gb200-nvl72, gb300-nvl72, gb200-nvl36, hgx-h100, hgx-h200 or hgx-b200.
    #[arg(long, conflicts_with = "file")]
    pub preset: Option<Preset>,
    /// How many racks or nodes of the preset.
    #[arg(long, default_value_t = 1, requires = "preset")]
    pub count: u32,
    /// A topology file (TOML) to read instead of a preset.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Write the topology to this file (TOML), e.g. to start a description of your own cluster.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// List the presets and exit.
    #[arg(long)]
    pub list: bool,
    /// Print the topology (or the presets) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ultraep topo` and returns what it prints.
pub fn run(args: &TopoArgs) -> Result<String, BenchError> {
    if args.list && args.json {
        let presets: Vec<serde_json::Value> = Preset::ALL
            .iter()
            .map(|preset| {
                serde_json::json!({
                    "name": preset.name(),
                    "product": preset.product(),
                    "domain_size": preset.domain_size(),
                    "unit": preset.unit(),
                })
            })
            .collect();
        return crate::json_output::to_json(&presets);
    }
    if args.list {
        let lines: Vec<String> = Preset::ALL
            .iter()
            .map(|preset| {
                format!(
                    "{:<12} {} ({} GPUs per {})",
                    preset.name(),
                    preset.product(),
                    preset.domain_size(),
                    preset.unit()
                )
            })
            .collect();
        return Ok(lines.join("\n") + "\n");
    }
    let topology = match (&args.file, args.preset) {
        (Some(path), _) => load(path)?,
        (None, Some(preset)) => preset.topology(args.count)?,
        (None, None) => Preset::Gb200Nvl72.topology(args.count)?,
    };
    if let Some(path) = &args.save {
        save(&topology, path)?;
    }
    if args.json {
        return crate::json_output::to_json(&json(&topology));
    }
    let mut out = topology.to_string();
    if let Some(path) = &args.save {
        out.push_str(&format!("wrote {}\n", path.display()));
    }
    Ok(out)
}

/// `topology` as JSON: its name, accelerator, and every domain's ranks and links.
fn json(topology: &Topology) -> serde_json::Value {
    let domains: Vec<serde_json::Value> = topology
        .domains()
        .iter()
        .map(|domain| {
            let links = domain.links();
            serde_json::json!({
                "name": domain.name(),
                "ranks": domain.ranks().iter().map(|rank| rank.0).collect::<Vec<_>>(),
                "scale_up_egress_bytes_per_second": links.scale_up_egress.get(),
                "scale_up_ingress_bytes_per_second": links.scale_up_ingress.get(),
                "scale_up_latency_ns": links.scale_up_latency.get(),
                "scale_out_bytes_per_second": links.scale_out.get(),
                "scale_out_latency_ns": links.scale_out_latency.get(),
            })
        })
        .collect();
    serde_json::json!({
        "name": topology.name(),
        "ranks": topology.rank_count(),
        "accelerator": topology.accelerator().map(|gpu| serde_json::json!({
            "name": gpu.name,
            "dense_bf16_gflops": gpu.dense_bf16_gflops,
            "memory_bytes_per_second": gpu.memory_bandwidth.get(),
            "memory_bytes": gpu.memory_bytes,
        })),
        "domains": domains,
    })
}

/// Reads and checks a topology file.
pub fn load(path: &Path) -> Result<Topology, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })?;
    Topology::from_toml_str(&text).map_err(|source| BenchError::TopologyFile {
        path: path.to_owned(),
        source,
    })
}

/// Writes a topology file.
pub fn save(topology: &Topology, path: &Path) -> Result<(), BenchError> {
    let text = topology.to_toml_string()?;
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })
}
