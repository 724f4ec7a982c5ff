//! Recorded router loads: ultraep's JSON-lines trace format and TensorRT-LLM's expert-statistics
//! dumps, so users can replay their own loads through every balancer.
//!
//! **JSON lines** (`.jsonl`): a header, then one record per (step, layer, source rank):
//!
//! ```text
//! {"ultraep_trace": 1, "ranks": 4, "experts": 8, "layers": 2, "top_k": 2}
//! {"step": 0, "layer": 0, "rank": 0, "counts": [12, 0, 3, 9, 0, 0, 1, 7]}
//! ...
//! ```
//!
//! `counts[e]` is the number of the rank's tokens routed to expert `e` in that layer and step.
//! Steps are numbered from 0; every (step, layer, rank) of every step up to the last must appear
//! exactly once, in any order. `top_k` is optional. Lines with a `"metrics"` key (what
//! `ultraep_runtime::TraceWriter` writes beside the loads of every step) are figures, not loads,
//! and are skipped. A line with a `"homes"` key records a layout change: from that step on, the
//! layer's masters live on the ranks it lists, one per expert
//! (`{"step": 40, "layer": 3, "homes": [0, 0, 5, ...]}`). One at step 0 gives the layer's
//! starting layout; without one a layer starts in balanced blocks (ascending, `E / R` experts a
//! rank, the first `E mod R` ranks one more). A later change keeps every rank's number of
//! masters.
//!
//! **TensorRT-LLM** (`EXPERT_STATISTIC_PATH` dumps): a directory with `meta_info.json`
//! (`num_experts`, `num_experts_per_token`) and `rank{r}.safetensors` for ranks 0 to R - 1, each
//! holding an integer tensor of `num_experts` counts per key `"{iter}_{layer}"`: rank `r`'s row of
//! the load matrix. Iterations and layers are renumbered densely in ascending order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use ultraep_runtime::TraceWriter;

use crate::BenchError;

/// Recorded loads: steps of layers of `ranks x experts` row-major matrices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Source ranks.
    pub ranks: u32,
    /// Routed experts.
    pub experts: u32,
    /// Experts per token, where recorded.
    pub top_k: Option<u32>,
    /// `steps[s][l]` is the load matrix of layer `l` in step `s`.
    pub steps: Vec<Vec<Vec<u32>>>,
    /// The layout changes, by step and layer.
    pub layouts: Vec<LayoutRecord>,
}

/// A recorded layout change: from step `step` on, expert `e` of layer `layer` is mastered on rank
/// `homes[e]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutRecord {
    /// The first step planned in the new layout.
    pub step: u32,
    /// The layer.
    pub layer: u32,
    /// The home rank of every expert.
    pub homes: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    ultraep_trace: u32,
    ranks: u32,
    experts: u32,
    layers: u32,
    #[serde(default)]
    top_k: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    step: u32,
    layer: u32,
    rank: u32,
    counts: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct MetaInfo {
    num_experts: u32,
    #[serde(default)]
    num_experts_per_token: Option<u32>,
}

fn invalid(source: &str, message: String) -> BenchError {
    BenchError::InvalidProblem {
        source_name: source.to_owned(),
        message,
    }
}

/// Refuses an experts-per-token figure of 0: tokens are counted as pairs over it.
fn check_top_k(source: &str, top_k: Option<u32>) -> Result<(), BenchError> {
    match top_k {
        Some(0) => Err(invalid(
            source,
            "top_k is 0: every token goes to at least one expert".into(),
        )),
        _ => Ok(()),
    }
}

/// Refuses a layout change that names a layer, an expert count or a rank the header does not
/// have. Nothing here is sized by the header: a header that declares billions of ranks costs
/// nothing until records back it.
fn check_layout(layout: &LayoutRecord, header: &Header) -> Result<(), String> {
    if layout.layer >= header.layers {
        return Err(format!(
            "layer {} is outside the header's {} layers",
            layout.layer, header.layers
        ));
    }
    if layout.homes.len() != header.experts as usize {
        return Err(format!(
            "{} homes, but the header says {} experts",
            layout.homes.len(),
            header.experts
        ));
    }
    if let Some(&home) = layout.homes.iter().find(|&&home| home >= header.ranks) {
        return Err(format!("home rank {home} of {} ranks", header.ranks));
    }
    Ok(())
}

/// Every rank's number of masters under `homes`, for the ranks that have any.
fn masters_per_rank(homes: &[u32]) -> BTreeMap<u32, u32> {
    let mut counts = BTreeMap::new();
    for &home in homes {
        *counts.entry(home).or_insert(0) += 1;
    }
    counts
}

/// Refuses a later layout change of a layer that changes a rank's number of masters: a change
/// swaps masters. A change at step 0 gives the layer's starting layout, which may be any; before
/// one, a layer starts in balanced blocks (`E / R` experts a rank, the first `E mod R` ranks one
/// more). `layouts` is sorted by (step, layer).
fn check_swaps<'a>(
    layouts: impl Iterator<Item = &'a LayoutRecord>,
    header: &Header,
) -> Result<(), String> {
    let blocks =
        |rank: u32| header.experts / header.ranks + u32::from(rank < header.experts % header.ranks);
    let mut previous: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
    for layout in layouts {
        let counts = masters_per_rank(&layout.homes);
        if layout.step > 0 {
            // Both sides count every expert once, so equal counts on the ranks named here leave
            // none for the ranks not named.
            let differs = match previous.get(&layout.layer) {
                Some(before) => before != &counts,
                None => counts.iter().any(|(&rank, &count)| count != blocks(rank)),
            };
            if differs {
                return Err(format!(
                    "the layout change of step {} layer {} changes a rank's number of masters: a \
                     change swaps masters",
                    layout.step, layout.layer
                ));
            }
        }
        previous.insert(layout.layer, counts);
    }
    Ok(())
}

impl Trace {
    /// Layers per step.
    pub fn layers(&self) -> u32 {
        self.steps.first().map_or(0, |s| s.len() as u32)
    }

    /// Parses a JSON-lines trace; `source` names it in errors.
    pub fn from_jsonl(text: &str, source: &str) -> Result<Self, BenchError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty());
        let (_, first) = lines
            .next()
            .ok_or_else(|| invalid(source, "the trace is empty: it needs a header line".into()))?;
        let header: Header = serde_json::from_str(first)
            .map_err(|error| invalid(source, format!("line 1 (the header): {error}")))?;
        if header.ultraep_trace != 1 {
            return Err(invalid(
                source,
                format!("trace format version {} is not 1", header.ultraep_trace),
            ));
        }
        if header.ranks == 0 || header.experts == 0 || header.layers == 0 {
            return Err(invalid(
                source,
                "ranks, experts and layers must all be at least 1".into(),
            ));
        }
        check_top_k(source, header.top_k)?;
        // Records are kept as read (memory in proportion to the text) and laid out in steps only
        // once every one is known to be there: a header or a step number that declares more than
        // the file holds is refused before anything that size is allocated.
        let mut records: BTreeMap<(u32, u32, u32), Vec<u32>> = BTreeMap::new();
        let mut layouts: BTreeMap<(u32, u32), LayoutRecord> = BTreeMap::new();
        for (index, line) in lines {
            let at = |message: String| invalid(source, format!("line {}: {message}", index + 1));
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|error| at(error.to_string()))?;
            if value.get("metrics").is_some() {
                continue;
            }
            if value.get("homes").is_some() {
                let layout: LayoutRecord =
                    serde_json::from_value(value).map_err(|error| at(error.to_string()))?;
                check_layout(&layout, &header).map_err(at)?;
                let key = (layout.step, layout.layer);
                if layouts.insert(key, layout).is_some() {
                    return Err(at(format!(
                        "step {} layer {} has two layout changes",
                        key.0, key.1
                    )));
                }
                continue;
            }
            let record: Record =
                serde_json::from_value(value).map_err(|error| at(error.to_string()))?;
            if record.rank >= header.ranks || record.layer >= header.layers {
                return Err(at(format!(
                    "rank {} layer {} is outside the header's {} ranks and {} layers",
                    record.rank, record.layer, header.ranks, header.layers
                )));
            }
            if record.counts.len() != header.experts as usize {
                return Err(at(format!(
                    "{} counts, but the header says {} experts",
                    record.counts.len(),
                    header.experts
                )));
            }
            if records
                .insert((record.step, record.layer, record.rank), record.counts)
                .is_some()
            {
                return Err(at(format!(
                    "step {} layer {} rank {} appears twice",
                    record.step, record.layer, record.rank
                )));
            }
        }
        let Some(&(last_step, _, _)) = records.keys().next_back() else {
            return Err(invalid(
                source,
                "the trace has a header but no records".into(),
            ));
        };
        // Every (step, layer, rank) up to the last step must be there: as many records as that.
        let expected =
            (u128::from(last_step) + 1) * u128::from(header.layers) * u128::from(header.ranks);
        if records.len() as u128 != expected {
            // The first one missing, in order: within the first `records.len() + 1` places.
            let mut wanted = (0..=last_step).flat_map(|step| {
                (0..header.layers)
                    .flat_map(move |layer| (0..header.ranks).map(move |rank| (step, layer, rank)))
            });
            let missing = wanted
                .find(|key| !records.contains_key(key))
                .unwrap_or((last_step, 0, 0));
            return Err(invalid(
                source,
                format!(
                    "step {} layer {} rank {} is missing (is the file truncated?); the header and the last step ({last_step}) call for {expected} records, the file has {}",
                    missing.0,
                    missing.1,
                    missing.2,
                    records.len()
                ),
            ));
        }
        if let Some(&(step, layer)) = layouts.keys().find(|(step, _)| *step > last_step) {
            return Err(invalid(
                source,
                format!(
                    "the layout change of step {step} layer {layer} comes after the last step ({last_step})"
                ),
            ));
        }
        check_swaps(layouts.values(), &header).map_err(|message| invalid(source, message))?;
        let cells = header.ranks as usize * header.experts as usize;
        let mut steps: Vec<Vec<Vec<u32>>> = Vec::with_capacity(last_step as usize + 1);
        let mut records = records.into_iter().peekable();
        for _ in 0..=last_step {
            let mut layers = Vec::with_capacity(header.layers as usize);
            for _ in 0..header.layers {
                let mut matrix = Vec::with_capacity(cells);
                for _ in 0..header.ranks {
                    // Complete and ordered by (step, layer, rank): the next record is this row.
                    if let Some((_, counts)) = records.next() {
                        matrix.extend_from_slice(&counts);
                    }
                }
                layers.push(matrix);
            }
            steps.push(layers);
        }
        Ok(Self {
            ranks: header.ranks,
            experts: header.experts,
            top_k: header.top_k,
            steps,
            layouts: layouts.into_values().collect(),
        })
    }

    /// Writes the trace as JSON lines (what [`Trace::from_jsonl`] reads back unchanged), through
    /// the runtime's [`TraceWriter`], the one writer of the format. Fails on a trace whose
    /// matrices or layouts do not fit its ranks and experts.
    pub fn to_jsonl(&self) -> Result<String, BenchError> {
        let mut writer = TraceWriter::new(
            Vec::new(),
            self.ranks,
            self.experts,
            self.layers(),
            self.top_k,
        )?;
        for (step, layers) in self.steps.iter().enumerate() {
            for (layer, matrix) in layers.iter().enumerate() {
                writer.write_load(step, layer as u32, matrix)?;
            }
        }
        for layout in &self.layouts {
            writer.write_homes(layout.step as usize, layout.layer, &layout.homes)?;
        }
        let bytes = writer.finish()?;
        // The writer writes only ASCII.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads a JSON-lines trace file, or a TensorRT-LLM expert-statistics directory.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let io = |source| BenchError::Io {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            return Self::from_trtllm_dir(path);
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_jsonl(&text, &path.display().to_string())
    }

    /// Reads a TensorRT-LLM expert-statistics dump directory.
    pub fn from_trtllm_dir(directory: &Path) -> Result<Self, BenchError> {
        let name = directory.display().to_string();
        let read = |file: &str| {
            let path = directory.join(file);
            std::fs::read(&path).map_err(|source| BenchError::Io { path, source })
        };
        let meta = read("meta_info.json")?;
        let ranks = rank_files(directory)?;
        let files = (0..ranks)
            .map(|rank| read(&format!("rank{rank}.safetensors")))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_trtllm_files(&name, &meta, &files)
    }

    /// Reads a TensorRT-LLM dump from the bytes of its files: `meta_info.json`, then
    /// `rank{r}.safetensors` for every rank in order; `name` names the dump in errors.
    pub fn from_trtllm_files(
        name: &str,
        meta: &[u8],
        ranks: &[Vec<u8>],
    ) -> Result<Self, BenchError> {
        let name = name.to_owned();
        let meta: MetaInfo = serde_json::from_slice(meta)
            .map_err(|error| invalid(&name, format!("meta_info.json: {error}")))?;
        if meta.num_experts == 0 {
            return Err(invalid(&name, "meta_info.json: num_experts is 0".into()));
        }
        check_top_k(&name, meta.num_experts_per_token)?;
        let files = ranks;
        let ranks =
            u32::try_from(files.len()).map_err(|_| invalid(&name, "too many rank files".into()))?;
        if ranks == 0 {
            return Err(invalid(&name, "no rank0.safetensors in the dump".into()));
        }
        // (iteration, layer) -> one row per rank.
        let mut records: BTreeMap<(u64, u64), Vec<Option<Vec<u32>>>> = BTreeMap::new();
        for rank in 0..ranks {
            let file = format!("rank{rank}.safetensors");
            let bytes = &files[rank as usize];
            let tensors = safetensors::SafeTensors::deserialize(bytes)
                .map_err(|error| invalid(&name, format!("{file}: {error}")))?;
            for (key, view) in tensors.tensors() {
                let at =
                    |message: String| invalid(&name, format!("{file}, key {key:?}: {message}"));
                let (iteration, layer) = key
                    .split_once('_')
                    .and_then(|(i, l)| Some((i.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
                    .ok_or_else(|| at("keys must be \"{iter}_{layer}\"".into()))?;
                if view.shape() != [meta.num_experts as usize] {
                    return Err(at(format!(
                        "shape {:?}, expected [{}]",
                        view.shape(),
                        meta.num_experts
                    )));
                }
                let counts = integer_counts(view.dtype(), view.data()).map_err(at)?;
                let rows = records
                    .entry((iteration, layer))
                    .or_insert_with(|| vec![None; ranks as usize]);
                rows[rank as usize] = Some(counts);
            }
        }
        let iterations: BTreeSet<u64> = records.keys().map(|k| k.0).collect();
        let layers: BTreeSet<u64> = records.keys().map(|k| k.1).collect();
        if iterations.is_empty() {
            return Err(invalid(&name, "the dump holds no records".into()));
        }
        let mut steps = Vec::with_capacity(iterations.len());
        for &iteration in &iterations {
            let mut step = Vec::with_capacity(layers.len());
            for &layer in &layers {
                let rows = records.get(&(iteration, layer)).ok_or_else(|| {
                    invalid(
                        &name,
                        format!(
                            "iteration {iteration} has no layer {layer} (is the dump truncated?)"
                        ),
                    )
                })?;
                let mut matrix = Vec::with_capacity(ranks as usize * meta.num_experts as usize);
                for (rank, row) in rows.iter().enumerate() {
                    let row = row.as_ref().ok_or_else(|| {
                        invalid(
                            &name,
                            format!("rank{rank}.safetensors lacks key \"{iteration}_{layer}\""),
                        )
                    })?;
                    matrix.extend_from_slice(row);
                }
                step.push(matrix);
            }
            steps.push(step);
        }
        Ok(Self {
            ranks,
            experts: meta.num_experts,
            top_k: meta.num_experts_per_token,
            steps,
            layouts: Vec::new(),
        })
    }
}

/// How many `rank{r}.safetensors` files `directory` holds: every rank from 0 to the highest one
/// present must be there, or the error names the missing ones.
fn rank_files(directory: &Path) -> Result<u32, BenchError> {
    let name = directory.display().to_string();
    let entries = std::fs::read_dir(directory).map_err(|source| BenchError::Io {
        path: directory.to_owned(),
        source,
    })?;
    let mut present = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| BenchError::Io {
            path: directory.to_owned(),
            source,
        })?;
        let file = entry.file_name();
        let rank = file
            .to_str()
            .and_then(|file| file.strip_prefix("rank"))
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok());
        if let Some(rank) = rank {
            present.insert(rank);
        }
    }
    let Some(&highest) = present.iter().next_back() else {
        return Err(invalid(
            &name,
            "no rank0.safetensors in the directory".into(),
        ));
    };
    let count = present.len() as u32;
    if u64::from(highest) + 1 != u64::from(count) {
        let missing: Vec<String> = (0..=highest)
            .filter(|rank| !present.contains(rank))
            .take(8)
            .map(|rank| format!("rank{rank}.safetensors"))
            .collect();
        return Err(invalid(
            &name,
            format!(
                "ranks 0 to {highest} need a file each; missing: {}{}",
                missing.join(", "),
                if (highest as usize + 1) - present.len() > missing.len() {
                    " and more"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(count)
}

/// Non-negative integer counts that fit in 32 bits, from a little-endian tensor.
fn integer_counts(dtype: safetensors::Dtype, data: &[u8]) -> Result<Vec<u32>, String> {
    use safetensors::Dtype;
    let values: Vec<i128> = match dtype {
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| i128::from(i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i128::from(i32::from_le_bytes(b.try_into().unwrap_or([0; 4]))))
            .collect(),
        Dtype::U32 => data
            .chunks_exact(4)
            .map(|b| i128::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))))
            .collect(),
        Dtype::U64 => data
            .chunks_exact(8)
            .map(|b| i128::from(u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))))
            .collect(),
        other => return Err(format!("dtype {other:?}; expert counts must be integers")),
    };
    values
        .into_iter()
        .map(|value| {
            u32::try_from(value).map_err(|_| format!("count {value} is negative or above 2^32 - 1"))
        })
        .collect()
}
