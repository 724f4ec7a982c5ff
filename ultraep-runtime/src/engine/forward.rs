//! The forward half of a step: plan the exact load (fast, returns at once), then move the
//! replicas' weights on the data plane while the caller computes, and hold the step's slots until
//! the caller releases the layer's forward.

use std::time::{Duration, Instant};

use ultraep_plan::{LoadMatrix, Plan};

use super::{Engine, LayerStep, Planned, digest};
use crate::backend::Started;
use crate::report::StepReport;
use crate::slots::SlotContent;
use crate::{Backend, Mode, RuntimeError, StepId};

/// The weights of a step still moving: the handle [`Engine::begin_step`] returns, to give back to
/// [`Engine::finish_step`]. While it is out the engine refuses every call that would change its
/// state with [`RuntimeError::TransferPending`]; reading other steps' replicas is fine.
#[derive(Debug)]
#[must_use = "the step's plan takes effect only when its transfers are finished"]
pub struct TransfersInFlight {
    step: StepId,
}

impl TransfersInFlight {
    /// The step whose weights are moving.
    pub fn step(&self) -> StepId {
        self.step
    }
}

/// A step between [`Engine::begin_step`] and [`Engine::finish_step`].
#[derive(Debug)]
pub(super) struct Pending {
    step: StepId,
    index: usize,
    report: StepReport,
    started: Instant,
}

impl<B: Backend> Engine<B> {
    /// Refuses a call that would change the engine's state while a step's weights move.
    pub(super) fn check_no_pending(&self) -> Result<(), RuntimeError> {
        if self.migrating.is_some() {
            return Err(RuntimeError::LayoutChange(
                "a layout round is moving masters: finish it first".into(),
            ));
        }
        match &self.pending {
            Some(pending) => Err(RuntimeError::TransferPending { step: pending.step }),
            None => Ok(()),
        }
    }

    /// Plans `loads` (the all-gathered exact load of the layer: tokens from every rank to every
    /// expert) for `step` and puts every replica's current weights in a slot: [`Engine::begin_step`]
    /// and [`Engine::finish_step`] in one call. On error the engine keeps its previous plans;
    /// slots a failed transfer was writing are marked empty.
    pub fn step(
        &mut self,
        step: StepId,
        loads: LoadMatrix<'_>,
    ) -> Result<StepReport, RuntimeError> {
        match self.begin_step(step, loads)? {
            Ok(report) => Ok(report),
            Err(in_flight) => self.finish_step(in_flight),
        }
    }

    /// Plans `step` and starts moving its replicas' weights on the data plane, then returns:
    /// `Ok(report)` when no weights had to move (the step is complete), else the handle of the
    /// transfers, which the caller gives to [`Engine::finish_step`] once it has done other work
    /// (computing the previous layer, say). On the host data plane with more than one worker the
    /// transfers run on the workers meanwhile; elsewhere they run here.
    pub fn begin_step(
        &mut self,
        step: StepId,
        loads: LoadMatrix<'_>,
    ) -> Result<Result<StepReport, TransfersInFlight>, RuntimeError> {
        let index = self.check_step_start(step)?;
        let ranks = self.config.layout.num_ranks() as usize;
        let experts = self.config.model.experts as usize;
        if (loads.ranks(), loads.experts()) != (ranks, experts) {
            return Err(RuntimeError::InvalidInput(format!(
                "a load of {} ranks x {} experts for an engine of {ranks} x {experts}",
                loads.ranks(),
                loads.experts()
            )));
        }
        let started = Instant::now();
        let versions = &self.versions[step.layer as usize * experts..][..experts];
        let residency = if self.config.prefer_resident_replicas {
            self.slots
                .residency_into(step, |e| versions[e as usize], &mut self.scratch.residency);
            Some(&self.scratch.residency)
        } else {
            None
        };
        let planner = self.moved_layouts[step.layer as usize]
            .as_mut()
            .unwrap_or(&mut self.planner);
        planner.plan_preferring(loads, residency, &mut self.candidate.plan)?;
        let planning = started.elapsed();
        // The load is kept now; it becomes the step's only when the transfers succeed.
        self.candidate.loads.clear();
        self.candidate.loads.extend_from_slice(loads.as_slice());
        self.candidate.split.clear();
        self.candidate.by_domain = false;
        self.begin_planned(step, index, planning)
    }

    /// Refuses to start `step` (a state change in progress, a plan of another microbatch still
    /// open where it would go, its own backward in progress); else where its plan goes.
    pub(super) fn check_step_start(&self, step: StepId) -> Result<usize, RuntimeError> {
        self.check_layer(step.layer)?;
        self.check_no_pending()?;
        self.check_not_switching(step.layer)?;
        if self.masters_dirty {
            return Err(RuntimeError::MastersChanged);
        }
        let index = self.entry_index(step);
        if let Some(entry) = &self.steps[index] {
            if entry.microbatch != step.microbatch && entry.open {
                return Err(RuntimeError::InFlight {
                    step,
                    busy: entry.microbatch,
                });
            }
            if entry.microbatch == step.microbatch && entry.holding {
                return Err(RuntimeError::InvalidInput(format!(
                    "{step} is in its backward; it cannot be planned again"
                )));
            }
        }
        Ok(index)
    }

    /// Places the candidate plan (made in `planning`) of `step` and starts its transfers: the
    /// second half of [`Engine::begin_step`].
    pub(super) fn begin_planned(
        &mut self,
        step: StepId,
        index: usize,
        planning: Duration,
    ) -> Result<Result<StepReport, TransfersInFlight>, RuntimeError> {
        let started = Instant::now();
        let copies = self.place(step, Planned::Candidate)?;
        let report = StepReport {
            step,
            metrics: *self.candidate.plan.metrics(),
            copies,
            copies_skipped: self.scratch.placement.skipped,
            bytes_moved: 0,
            planning,
            transfer: Duration::ZERO,
        };
        match self.start_copy()? {
            None => Ok(Ok(self.commit(index, report, started))),
            Some(bytes) => {
                self.pending = Some(Pending {
                    step,
                    index,
                    report: StepReport {
                        bytes_moved: bytes,
                        ..report
                    },
                    started,
                });
                Ok(Err(TransfersInFlight { step }))
            }
        }
    }

    /// Waits for the transfers of `in_flight` and makes its step's plan the one in force. On
    /// error the previous plan stays, and the slots the transfers were writing are empty.
    pub fn finish_step(
        &mut self,
        in_flight: TransfersInFlight,
    ) -> Result<StepReport, RuntimeError> {
        let pending = self
            .pending
            .take_if(|pending| pending.step == in_flight.step)
            .ok_or(RuntimeError::NoPlan {
                step: in_flight.step,
            })?;
        self.finish_copy(pending.step.layer)?;
        Ok(self.commit(pending.index, pending.report, pending.started))
    }

    /// Makes the candidate plan `step`'s, with the slots just placed.
    fn commit(&mut self, index: usize, mut report: StepReport, started: Instant) -> StepReport {
        let step = report.step;
        let entry = self.steps[index].get_or_insert_with(|| LayerStep {
            microbatch: step.microbatch,
            plan: Plan::default(),
            loads: Vec::new(),
            slots: Vec::new(),
            own_split: Vec::new(),
            by_domain: false,
            open: false,
            holding: false,
            token: 0,
        });
        std::mem::swap(&mut entry.plan, &mut self.candidate.plan);
        std::mem::swap(&mut entry.slots, &mut self.scratch.placement.slots);
        std::mem::swap(&mut entry.loads, &mut self.candidate.loads);
        std::mem::swap(&mut entry.own_split, &mut self.candidate.split);
        entry.by_domain = self.candidate.by_domain;
        entry.microbatch = step.microbatch;
        entry.open = self.config.mode == Mode::Training;
        entry.holding = false;
        if self.config.hold_forward {
            self.slots.release(step);
            self.slots.hold(step, &entry.slots);
        }
        self.digest = digest::of_step(self.digest, step, &entry.plan, &entry.slots);
        report.transfer = started.elapsed();
        self.summary.add(&report);
        report
    }

    /// Ends `step`'s forward: its slots, held since its step when
    /// [`crate::EngineConfig::hold_forward`] is on, may be taken by other steps again. (In
    /// training, [`Engine::restore`] holds them again for the backward.)
    pub fn release_forward(&mut self, step: StepId) -> Result<(), RuntimeError> {
        self.check_no_pending()?;
        let entry = self.entry(step)?;
        if entry.holding {
            return Err(RuntimeError::InvalidInput(format!(
                "{step} is in its backward: reduce_gradients releases its slots"
            )));
        }
        self.slots.release(step);
        Ok(())
    }

    /// Chooses a slot for every replica of `planned` (`step`'s plan) into `self.scratch.placement`, and
    /// gathers the copies to make into `self.scratch.fanouts`. Returns the number of copies.
    pub(super) fn place(&mut self, step: StepId, planned: Planned) -> Result<u32, RuntimeError> {
        let experts = self.config.model.experts as usize;
        let versions = &self.versions[step.layer as usize * experts..][..experts];
        let instances = match planned {
            Planned::Candidate => self.candidate.plan.instances(),
            Planned::Kept(index) => self.steps[index]
                .as_ref()
                .map_or(&[][..], |entry| entry.plan.instances()),
        };
        let (masters, fanouts) = (&self.masters, &mut self.scratch.fanouts);
        fanouts.clear();
        let mut refused = None;
        self.slots.place(
            step,
            instances,
            |expert| versions[expert as usize],
            &mut self.scratch.placement,
            |expert, destination| {
                let (home, index) = masters.region(step.layer, expert);
                if let Err(error) = fanouts.add(expert, home, index, destination) {
                    refused.get_or_insert(error);
                }
            },
        )?;
        if let Some(error) = refused {
            return Err(error.into());
        }
        Ok(fanouts.replica_count() as u32)
    }

    /// Starts copying the fan-outs gathered in `self.scratch.fanouts`: `None` when there is nothing to
    /// copy, else the bytes the copy stores. A copy that ends here (an error, or a backend that
    /// cannot overlap) is finished by [`Engine::finish_copy`] all the same.
    pub(super) fn start_copy(&mut self) -> Result<Option<u64>, RuntimeError> {
        if self.scratch.fanouts.is_empty() {
            return Ok(None);
        }
        self.scratch.schedule_builder.build_into(
            self.scratch.fanouts.finish()?,
            &self.state,
            &self.config.topology,
            self.config.transfer,
            &mut self.schedule,
        )?;
        if self.weights.uses_tile_tasks() {
            self.scratch
                .task_builder
                .build_into(&self.schedule, &mut self.tasks);
        } else {
            self.tasks.clear();
        }
        // The slots about to be written hold nothing usable until the copy is verified.
        for fanout in self.scratch.fanouts.set().fanouts() {
            for &(rank, slot) in fanout.destinations() {
                self.slots.set_content(rank, slot, None);
            }
        }
        self.copy_started = Some(self.weights.start_distribute(&self.schedule, &self.tasks));
        // Every destination stores the whole state once.
        let destinations = self.scratch.fanouts.replica_count() as u64;
        Ok(Some(self.schedule.state_bytes() * destinations))
    }

    /// Finishes the copy [`Engine::start_copy`] started (replicas of `layer`) and records what
    /// the slots now hold.
    pub(super) fn finish_copy(&mut self, layer: u32) -> Result<u64, RuntimeError> {
        let result = match self.copy_started.take() {
            Some(Ok(Started::Done(bytes))) => Ok(bytes),
            Some(Ok(Started::Running)) => self.weights.finish_distribute(),
            Some(Err(error)) => Err(error),
            None => Ok(0),
        };
        if result.is_ok() {
            let experts = self.config.model.experts;
            for fanout in self.scratch.fanouts.set().fanouts() {
                let content = SlotContent {
                    layer,
                    expert: fanout.expert(),
                    version: self.versions[(layer * experts + fanout.expert()) as usize],
                };
                for &(rank, slot) in fanout.destinations() {
                    self.slots.set_content(rank, slot, Some(content));
                }
            }
        }
        result
    }

    /// [`Engine::start_copy`] and [`Engine::finish_copy`] at once; returns the bytes stored.
    pub(super) fn copy(&mut self, layer: u32) -> Result<u64, RuntimeError> {
        match self.start_copy()? {
            None => Ok(0),
            Some(_) => self.finish_copy(layer),
        }
    }
}
