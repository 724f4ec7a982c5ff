//! The host-driven engine: no expert memory; the caller moves the bytes the engine's transfer
//! program and gradient sends describe, with its own communication library.

use super::Engine;
use crate::{EngineConfig, GradientSend, HostDriven, RuntimeError, TransferProgram};

impl Engine<HostDriven> {
    /// The engine of rank `rank` in host-driven mode: it holds no expert memory and moves no
    /// bytes; after each step the caller executes [`Engine::transfer_program`] with its own
    /// communication library, and in the backward sends [`Engine::gradient_sends`] and sums them
    /// with [`Engine::sum_replica_gradients`].
    pub fn host_driven(config: EngineConfig, rank: u32) -> Result<Self, RuntimeError> {
        Self::for_ranks(config, rank..rank + 1, |shape| Ok(HostDriven::new(shape)))
    }

    /// The messages of the last step (or restore) that moved weights, for every rank; this
    /// engine's rank sends `sends(local)` and receives `receives(local)`.
    pub fn transfer_program(&self) -> &TransferProgram {
        self.weights.program()
    }

    /// The replica gradients of the last [`Engine::reduce_gradients`]: what every rank sends to
    /// which master's rank.
    pub fn gradient_sends(&self) -> impl Iterator<Item = GradientSend> + '_ {
        self.gradients
            .iter()
            .flat_map(|(_, store)| store.gradient_sends())
    }

    /// Sums the replica gradients of `expert` (received from the ranks of its replicas in the
    /// last reduction) into `master`, its master's FP32 gradient, in the documented order.
    pub fn sum_replica_gradients<'a>(
        &mut self,
        expert: u32,
        master: &mut [f32],
        replica: impl Fn(u32) -> &'a [f32],
    ) -> Result<(), RuntimeError> {
        match self.gradients.as_mut() {
            Some((_, store)) => store.sum_replica_gradients(expert, master, replica),
            None => Err(RuntimeError::InvalidConfig(
                "a prefill engine has no gradients".into(),
            )),
        }
    }
}
