//! What keeps the ranks of a group honest with each other: a running digest of every rank's
//! metadata, appended to its row of every gathered load, so that two ranks whose plans or slot
//! tables drifted apart fail at once with [`RuntimeError::Diverged`] instead of moving weights
//! into slots their owners do not expect.

use ultraep_plan::{LoadMatrix, Plan};

use super::Engine;
use crate::router_counts::count_ids;
use crate::{Backend, Collective, RuntimeError, StepId, StepReport};

/// The digest before any call (FNV-1a's offset basis).
pub(super) const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Mixed in by [`Engine::masters_updated`].
pub(super) const MASTERS_UPDATED: u64 = 0x6d61_7374_6572_7321;

/// Words appended to every row: the digest, low half then high half.
const DIGEST_WORDS: usize = 2;

/// Folds `words` into `digest` (FNV-1a over 64-bit words, with a shift so that high bits reach
/// the low ones).
pub(super) fn mix(mut digest: u64, words: &[u64]) -> u64 {
    for &word in words {
        digest ^= word;
        digest = digest.wrapping_mul(0x0000_0100_0000_01b3);
        digest ^= digest >> 29;
    }
    digest
}

/// Folds a step's (or a restore's) plan and slot choice into `digest`.
pub(super) fn of_step(digest: u64, step: StepId, plan: &Plan, slots: &[Option<(u32, u16)>]) -> u64 {
    let mut digest = mix(
        digest,
        &[u64::from(step.microbatch) << 32 | u64::from(step.layer)],
    );
    for (instance, slot) in plan.instances().iter().zip(slots) {
        let place = slot.map_or(u64::MAX, |(rank, slot)| {
            u64::from(rank) << 16 | u64::from(slot)
        });
        digest = mix(
            digest,
            &[
                u64::from(instance.expert) << 32 | u64::from(instance.rank),
                u64::from(instance.quota),
                place,
            ],
        );
    }
    digest
}

/// Buffers of [`Engine::step_gathered`], kept between calls.
#[derive(Debug, Default)]
pub(super) struct GatherScratch {
    row: Vec<u32>,
    gathered: Vec<u32>,
    loads: Vec<u32>,
}

impl<B: Backend> Engine<B> {
    /// A step from this engine's own router output: counts the top-k ids of each local rank
    /// (`ids[i]` for the `i`-th local rank, `top_k` per token, token-major), all-gathers the rows
    /// with every rank's metadata digest through `collective`, checks that every rank's digest is
    /// the same, and plans the gathered load with [`Engine::step`]. Every member of the
    /// collective holds as many ranks as this engine, in rank order. If a digest differs, every
    /// rank fails with [`RuntimeError::Diverged`] and nothing changes.
    pub fn step_gathered(
        &mut self,
        step: StepId,
        collective: &mut impl Collective,
        ids: &[&[u32]],
    ) -> Result<StepReport, RuntimeError> {
        self.check_layer(step.layer)?;
        let ranks = self.config.layout.num_ranks() as usize;
        let local = self.local.len();
        let experts = self.config.model.experts as usize;
        if ids.len() != local {
            return Err(RuntimeError::InvalidInput(format!(
                "router ids of {} ranks for an engine that holds {local}",
                ids.len()
            )));
        }
        let members = collective.ranks() as usize;
        if members * local != ranks
            || collective.rank() as usize * local != self.local.start as usize
        {
            return Err(RuntimeError::InvalidInput(format!(
                "member {} of a collective of {members}, for an engine of ranks {:?} of {ranks}",
                collective.rank(),
                self.local
            )));
        }
        let row_words = local * experts + DIGEST_WORDS;
        let scratch = &mut self.gather;
        scratch.row.resize(row_words, 0);
        scratch.gathered.resize(members * row_words, 0);
        scratch.loads.resize(ranks * experts, 0);
        count_ids(
            ids,
            experts as u32,
            self.config.model.top_k,
            &mut scratch.row[..local * experts],
        )?;
        scratch.row[local * experts] = self.digest as u32;
        scratch.row[local * experts + 1] = (self.digest >> 32) as u32;
        collective.all_gather(&scratch.row, &mut scratch.gathered)?;
        let digest_of = |member: usize| {
            let row = &scratch.gathered[member * row_words..][..row_words];
            u64::from(row[local * experts]) | u64::from(row[local * experts + 1]) << 32
        };
        let expected = digest_of(0);
        if let Some(member) = (1..members).find(|&m| digest_of(m) != expected) {
            return Err(RuntimeError::Diverged {
                rank: (member * local) as u32,
                reference: 0,
                expected,
                found: digest_of(member),
            });
        }
        for member in 0..members {
            let counts = &scratch.gathered[member * row_words..][..local * experts];
            scratch.loads[member * local * experts..][..local * experts].copy_from_slice(counts);
        }
        let loads = std::mem::take(&mut self.gather.loads);
        let result = LoadMatrix::new(&loads, ranks, experts)
            .map_err(RuntimeError::from)
            .and_then(|matrix| self.step(step, matrix));
        self.gather.loads = loads;
        result
    }
}
