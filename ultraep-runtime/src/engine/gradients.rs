//! Training's backward: the replicas brought back for it, master and replica gradients, and
//! their reduction into the masters.

use ultraep_xfer::ExpertState;

use super::{Engine, Planned, check_size, digest, entry_in};
use crate::report::RestoreReport;
use crate::{Backend, RuntimeError, StepId};

impl<B: Backend> Engine<B> {
    /// Brings `step`'s replica weights back into slots before its expert backward (slots are
    /// shared by all layers and microbatches, so later steps may have taken some), and holds them
    /// until [`Engine::reduce_gradients`] ends the backward. Replicas whose slot still holds their
    /// weights are left alone; the others are copied again, perhaps into another slot, which
    /// [`Engine::replica_slot`] then gives. If it fails, call it again before using the replicas.
    pub fn restore(&mut self, step: StepId) -> Result<RestoreReport, RuntimeError> {
        self.check_layer(step.layer)?;
        self.check_no_pending()?;
        let index = self.entry_index(step);
        let entry = entry_in(&self.steps, index, step)?;
        if !entry.open {
            return Err(RuntimeError::InvalidInput(format!(
                "{step} has no backward to restore for (prefill, or its gradients were reduced)"
            )));
        }
        if self.masters_dirty {
            return Err(RuntimeError::MastersChanged);
        }
        let copies = self.place(step, Planned::Kept(index))?;
        let bytes_moved = self.copy(step.layer)?;
        let entry = self.steps[index]
            .as_mut()
            .ok_or(RuntimeError::NoPlan { step })?;
        std::mem::swap(&mut entry.slots, &mut self.scratch.placement.slots);
        entry.holding = true;
        self.restores += 1;
        entry.token = self.restores;
        self.slots.hold(step, &entry.slots);
        self.digest = digest::of_step(self.digest, step, &entry.plan, &entry.slots);
        Ok(RestoreReport {
            copies,
            copies_skipped: self.scratch.placement.skipped,
            bytes_moved,
        })
    }

    fn gradient_store(&mut self) -> Result<&mut (ExpertState, B), RuntimeError> {
        self.gradients
            .as_mut()
            .ok_or_else(|| RuntimeError::InvalidConfig("a prefill engine has no gradients".into()))
    }

    /// Sets the gradient of `expert`'s master in `layer` (what its own tokens contributed).
    pub fn write_master_gradient(
        &mut self,
        layer: u32,
        expert: u32,
        values: &[f32],
    ) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        self.check_expert(expert)?;
        let (home, index) = self.masters.region(layer, expert);
        let (state, store) = self.gradient_store()?;
        check_size("gradient", values.len() * 4, state.bytes())?;
        store.write_master(home, index, bytemuck_bytes(values))?;
        Ok(())
    }

    /// The gradient of `expert`'s master in `layer`.
    pub fn read_master_gradient(
        &mut self,
        layer: u32,
        expert: u32,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.check_layer(layer)?;
        self.check_expert(expert)?;
        let (home, index) = self.masters.region(layer, expert);
        let (_, store) = self.gradient_store()?;
        Ok(floats_of(&store.read_master(home, index)?))
    }

    /// Sets the gradient that a replica (instance `instance` of `step`'s plan) computed for its
    /// tokens, between [`Engine::restore`] and [`Engine::reduce_gradients`] of `step`; it waits in
    /// the gradient twin of the replica's slot.
    pub fn write_replica_gradient(
        &mut self,
        step: StepId,
        instance: u32,
        values: &[f32],
    ) -> Result<(), RuntimeError> {
        let entry = self.entry(step)?;
        if !entry.holding {
            return Err(RuntimeError::InvalidInput(format!(
                "{step} is not in its backward: restore it before writing replica gradients"
            )));
        }
        let expert = entry
            .plan
            .instances()
            .get(instance as usize)
            .map(|instance| instance.expert);
        let (expert, (rank, slot)) = expert
            .zip(entry.slots.get(instance as usize).copied().flatten())
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!("instance {instance} of {step} is no replica"))
            })?;
        let (state, store) = self.gradient_store()?;
        check_size("gradient", values.len() * 4, state.bytes())?;
        store.write_slot(rank, slot, expert, bytemuck_bytes(values))?;
        Ok(())
    }

    /// Ends a training step that will have no backward: its forward ran without autograd (under
    /// `no_grad`, or recomputed by activation checkpointing), or its graph was freed unused. Its
    /// slots are released and its place may go to a later microbatch, as after
    /// [`Engine::reduce_gradients`]; nothing moves and no gradient is summed. A step in its
    /// backward (restored, not yet reduced) is refused: its replicas' gradients are owed to
    /// their masters. A step already ended is left alone.
    pub fn drop_backward(&mut self, step: StepId) -> Result<(), RuntimeError> {
        self.end_unreduced(step, false)
    }

    /// Abandons `step`'s backward after [`Engine::restore`] began it and before
    /// [`Engine::reduce_gradients`] ended it (the framework's backward failed, or skipped the
    /// experts): its slots are released and its place may go to a later microbatch. Its
    /// replicas' gradients are lost; its masters' are whatever the framework kept. Every rank
    /// abandons the same step. A step not in its backward is refused (see
    /// [`Engine::drop_backward`]).
    pub fn abandon_backward(&mut self, step: StepId) -> Result<(), RuntimeError> {
        self.end_unreduced(step, true)
    }

    /// Ends `step` without a reduction: [`Engine::drop_backward`] (`in_backward` false) and
    /// [`Engine::abandon_backward`] (true), each refusing the other's case.
    fn end_unreduced(&mut self, step: StepId, in_backward: bool) -> Result<(), RuntimeError> {
        self.check_layer(step.layer)?;
        self.check_no_pending()?;
        let index = self.entry_index(step);
        let entry = entry_in(&self.steps, index, step)?;
        if entry.holding != in_backward {
            return Err(RuntimeError::InvalidInput(if in_backward {
                format!("{step} is not in its backward: drop_backward ends it")
            } else {
                format!("{step} is in its backward: reduce_gradients ends it")
            }));
        }
        self.slots.release(step);
        if let Some(entry) = self.steps[index].as_mut() {
            entry.open = false;
            entry.holding = false;
        }
        Ok(())
    }

    /// Sums every replica gradient of `step` into its master's gradient, in the documented order
    /// of `ultraep_xfer::reduce_gradients`, empties the replica gradient slots and ends the step's
    /// backward (its slots are free again, and a later microbatch may replace its plan). Every
    /// replica must have written its gradient; otherwise nothing changes.
    pub fn reduce_gradients(&mut self, step: StepId) -> Result<(), RuntimeError> {
        self.check_layer(step.layer)?;
        self.check_no_pending()?;
        let index = self.entry_index(step);
        let entry = entry_in(&self.steps, index, step)?;
        if !entry.holding {
            return Err(RuntimeError::InvalidInput(format!(
                "{step} is not in its backward: restore it first"
            )));
        }
        let token = entry.token;
        self.scratch.fanouts.clear();
        for (instance, slot) in entry.plan.instances().iter().zip(&entry.slots) {
            if let Some(destination) = *slot {
                let (home, index) = self.masters.region(step.layer, instance.expert);
                self.scratch
                    .fanouts
                    .add(instance.expert, home, index, destination)?;
            }
        }
        self.scratch.fanouts.finish()?;
        let Some((state, store)) = self.gradients.as_mut() else {
            return Err(RuntimeError::InvalidConfig(
                "a prefill engine has no gradients".into(),
            ));
        };
        self.scratch.schedule_builder.build_into(
            self.scratch.fanouts.set(),
            state,
            &self.config.topology,
            self.config.transfer,
            &mut self.schedule,
        )?;
        store.reduce_gradients(&self.schedule, token)?;
        self.slots.release(step);
        self.digest = digest::mix(self.digest, &[token]);
        if let Some(entry) = self.steps[index].as_mut() {
            entry.open = false;
            entry.holding = false;
        }
        Ok(())
    }
}

fn bytemuck_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

fn floats_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
