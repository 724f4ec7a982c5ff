//! What keeps the ranks of a group honest with each other: a running digest of every rank's
//! metadata, appended to its row of every gathered load, so that two ranks whose plans or slot
//! tables drifted apart fail at once with [`RuntimeError::Diverged`] instead of moving weights
//! into slots their owners do not expect.

use ultraep_plan::{LoadMatrix, Plan};

use super::Engine;
use crate::{Backend, Collective, RouterOutput, RuntimeError, StepId, StepReport};

/// The digest before any call (FNV-1a's offset basis).
pub(super) const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Mixed in by [`Engine::masters_updated`].
pub(super) const MASTERS_UPDATED: u64 = 0x6d61_7374_6572_7321;

/// Words a digest takes in every gathered row or record: low half, then high half.
pub(super) const DIGEST_WORDS: usize = 2;

/// Writes `digest` into the [`DIGEST_WORDS`] words of `words`, as every row and record carries it.
pub(super) fn write_words(digest: u64, words: &mut [u32]) {
    words[0] = digest as u32;
    words[1] = (digest >> 32) as u32;
}

/// The digest in the first [`DIGEST_WORDS`] words of `words`.
pub(super) fn read_words(words: &[u32]) -> u64 {
    u64::from(words[0]) | u64::from(words[1]) << 32
}

/// Checks that every one of `members` gathered the same digest (`digest_of(member)`, and
/// `first_rank(member)` its first rank): the one check every way into the engine that gathers
/// from the group runs before any weight moves, so that ranks whose metadata diverged all fail
/// alike with [`RuntimeError::Diverged`].
pub(super) fn check_agreement(
    members: usize,
    digest_of: impl Fn(usize) -> u64,
    first_rank: impl Fn(usize) -> u32,
) -> Result<(), RuntimeError> {
    let expected = digest_of(0);
    match (1..members).find(|&member| digest_of(member) != expected) {
        Some(member) => Err(RuntimeError::Diverged {
            rank: first_rank(member),
            reference: 0,
            expected,
            found: digest_of(member),
        }),
        None => Ok(()),
    }
}

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
    /// Words of this engine's row of a gathered load: the counts of its ranks, then its digest.
    pub fn gather_row_len(&self) -> usize {
        self.local.len() * self.config.model.experts as usize + DIGEST_WORDS
    }

    /// Writes into `row` this engine's row of the gathered load: its local ranks' tokens per
    /// expert, from their router `output`, then its metadata digest. The caller all-gathers the
    /// rows of every engine of the group (`all_gather_into_tensor`, say) and hands them to
    /// [`Engine::step_from_rows`]; [`Engine::step_gathered`] does both through a [`Collective`].
    pub fn gather_row(
        &self,
        output: RouterOutput<'_>,
        row: &mut Vec<u32>,
    ) -> Result<(), RuntimeError> {
        let local = self.local.len();
        let experts = self.config.model.experts;
        row.clear();
        row.resize(self.gather_row_len(), 0);
        output.count_into(
            local,
            experts,
            self.config.model.top_k,
            &mut row[..local * experts as usize],
        )?;
        self.append_digest(row);
        Ok(())
    }

    /// Writes the digest into the last words of a row of [`Engine::gather_row_len`] words.
    fn append_digest(&self, row: &mut [u32]) {
        let at = row.len() - DIGEST_WORDS;
        write_words(self.digest, &mut row[at..]);
    }

    /// Plans `step` from the rows every engine of the group wrote with [`Engine::gather_row`],
    /// member after member: checks that every member's digest is the same (else every rank
    /// fails alike with [`RuntimeError::Diverged`] and nothing changes), then runs
    /// [`Engine::step`] on the counts.
    pub fn step_from_rows(
        &mut self,
        step: StepId,
        gathered: &[u32],
    ) -> Result<StepReport, RuntimeError> {
        self.check_layer(step.layer)?;
        let ranks = self.config.layout.num_ranks() as usize;
        let local = self.local.len();
        let experts = self.config.model.experts as usize;
        let row_words = self.gather_row_len();
        let members = ranks / local;
        if members * local != ranks || gathered.len() != members * row_words {
            return Err(RuntimeError::InvalidInput(format!(
                "{} gathered words for {members} members of {row_words}",
                gathered.len()
            )));
        }
        check_agreement(
            members,
            |member| read_words(&gathered[member * row_words + local * experts..]),
            |member| (member * local) as u32,
        )?;
        let mut loads = std::mem::take(&mut self.scratch.gather.loads);
        loads.resize(ranks * experts, 0);
        for member in 0..members {
            let counts = &gathered[member * row_words..][..local * experts];
            loads[member * local * experts..][..local * experts].copy_from_slice(counts);
        }
        let result = LoadMatrix::new(&loads, ranks, experts)
            .map_err(RuntimeError::from)
            .and_then(|matrix| self.step(step, matrix));
        self.scratch.gather.loads = loads;
        result
    }

    /// A step from this engine's own router `output`: [`Engine::gather_row`], the all-gather of
    /// every member's row through `collective` (whose members hold as many ranks as this
    /// engine, in rank order), then [`Engine::step_from_rows`]. An engine that holds every rank
    /// gathers through a collective of one member (`InProcessCollective::group(1)`).
    pub fn step_gathered(
        &mut self,
        step: StepId,
        collective: &mut impl Collective,
        output: RouterOutput<'_>,
    ) -> Result<StepReport, RuntimeError> {
        let ranks = self.config.layout.num_ranks() as usize;
        let local = self.local.len();
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
        let mut row = std::mem::take(&mut self.scratch.gather.row);
        let mut gathered = std::mem::take(&mut self.scratch.gather.gathered);
        let result = self.gather_row(output, &mut row).and_then(|()| {
            gathered.resize(members * row.len(), 0);
            collective.all_gather(&row, &mut gathered)?;
            self.step_from_rows(step, &gathered)
        });
        self.scratch.gather.row = row;
        self.scratch.gather.gathered = gathered;
        result
    }
}
