//! The planning-problem file `ultraep plan` reads (JSON; format in `docs/plan-format.md`).

use serde::Deserialize;
use ultraep_plan::{ExpertLayout, PlanError, RankDomains};

/// A planning problem as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProblemFile {
    num_ranks: u32,
    experts_per_rank: u32,
    slots_per_rank: u32,
    domain_size: u32,
    loads: Vec<Vec<u32>>,
    #[serde(default)]
    home: Option<Vec<u32>>,
}

/// A checked planning problem.
#[derive(Debug, Clone)]
pub struct PlanProblem {
    /// Where every expert lives.
    pub layout: ExpertLayout,
    /// The domain of every rank.
    pub domains: RankDomains,
    /// Redundant slots per rank.
    pub slots_per_rank: u32,
    /// `loads[source][expert]`, row-major.
    pub loads: Vec<u32>,
}

impl PlanProblem {
    /// Parses and checks the JSON text of a problem; the error is one line naming the problem.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: ProblemFile = serde_json::from_str(text).map_err(|error| error.to_string())?;
        if file.num_ranks == 0 {
            return Err("num_ranks must be at least 1".into());
        }
        if file.loads.len() != file.num_ranks as usize {
            return Err(format!(
                "loads has {} rows, but num_ranks is {} (one row per source rank)",
                file.loads.len(),
                file.num_ranks
            ));
        }
        let experts = file.loads[0].len();
        if experts == 0 {
            return Err("loads rows are empty: there must be at least one expert".into());
        }
        if let Some((row, entries)) = file
            .loads
            .iter()
            .enumerate()
            .find(|(_, entries)| entries.len() != experts)
        {
            return Err(format!(
                "row {row} of loads has {} entries, but row 0 has {experts} (one per expert)",
                entries.len()
            ));
        }
        let layout = match file.home {
            Some(home) => {
                if home.len() != experts {
                    return Err(format!(
                        "home has {} entries, but loads has {experts} experts",
                        home.len()
                    ));
                }
                ExpertLayout::from_homes(file.num_ranks, home).map_err(describe)?
            }
            None => {
                if file.experts_per_rank == 0 {
                    return Err("experts_per_rank must be at least 1".into());
                }
                if !experts.is_multiple_of(file.experts_per_rank as usize) {
                    return Err(format!(
                        "{experts} experts are not divisible by experts_per_rank {}; give home to place them",
                        file.experts_per_rank
                    ));
                }
                let needed = experts / file.experts_per_rank as usize;
                if needed != file.num_ranks as usize {
                    return Err(format!(
                        "{experts} experts at {} per rank need {needed} ranks, but num_ranks is {}; give home to place them",
                        file.experts_per_rank, file.num_ranks
                    ));
                }
                ExpertLayout::contiguous(file.num_ranks, file.experts_per_rank).map_err(describe)?
            }
        };
        if file.domain_size == 0 || !file.num_ranks.is_multiple_of(file.domain_size) {
            return Err(format!(
                "domain_size {} does not divide num_ranks {}",
                file.domain_size, file.num_ranks
            ));
        }
        let domains = RankDomains::uniform(file.num_ranks, file.domain_size).map_err(describe)?;
        Ok(Self {
            layout,
            domains,
            slots_per_rank: file.slots_per_rank,
            loads: file.loads.concat(),
        })
    }
}

fn describe(error: PlanError) -> String {
    error.to_string()
}
