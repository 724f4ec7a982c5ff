//! The load's all-gather through NCCL, for expert-parallel groups whose ranks are processes on
//! several GPUs (behind the `nccl` feature). `ultraep-runtime` wraps it as a `Collective`.
//!
//! Rank 0 creates a [`NcclId`] and hands its bytes to every other rank out of band (the way
//! frameworks share NCCL ids: a TCP store, MPI, a file); every rank then builds its
//! [`NcclGather`] with it.

use std::ffi::c_char;

use cudarc::driver::CudaSlice;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use crate::KernelError;
use crate::gpu::{Gpu, driver};

/// Whether the NCCL library (`libnccl.so.2`) can be loaded.
pub fn nccl_available() -> bool {
    // SAFETY: only tries to load the library; no NCCL function is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn nccl(error: impl std::fmt::Debug) -> KernelError {
    KernelError::Device(format!("NCCL: {error:?}"))
}

/// The identity of an NCCL group, made by rank 0 and shared with every other rank.
#[derive(Debug, Clone, Copy)]
pub struct NcclId(pub [c_char; 128]);

impl NcclId {
    /// A new group identity (on rank 0).
    pub fn new() -> Result<Self, KernelError> {
        if !nccl_available() {
            return Err(KernelError::Device(
                "NCCL (libnccl.so.2) is not available".into(),
            ));
        }
        Ok(Self(*Id::new().map_err(nccl)?.internal()))
    }
}

/// One rank's end of an NCCL all-gather (and all-reduce) of `u32` rows.
pub struct NcclGather<'a> {
    gpu: &'a Gpu,
    comm: Comm,
    send: Option<CudaSlice<u32>>,
    receive: Option<CudaSlice<u32>>,
    /// The all-reduce's device buffers, kept from call to call like the all-gather's.
    reduce: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
}

impl std::fmt::Debug for NcclGather<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGather")
            .field("rank", &self.comm.rank())
            .field("ranks", &self.comm.world_size())
            .finish_non_exhaustive()
    }
}

impl<'a> NcclGather<'a> {
    /// Joins the group `id` as rank `rank` of `ranks`, on `gpu` (one GPU per rank). Blocks until
    /// every rank has joined.
    pub fn new(gpu: &'a Gpu, rank: u32, ranks: u32, id: NcclId) -> Result<Self, KernelError> {
        if !nccl_available() {
            return Err(KernelError::Device(
                "NCCL (libnccl.so.2) is not available".into(),
            ));
        }
        if rank >= ranks || ranks > i32::MAX as u32 {
            return Err(KernelError::InvalidInput(format!("rank {rank} of {ranks}")));
        }
        let comm = Comm::from_rank(
            gpu.stream().clone(),
            rank as usize,
            ranks as usize,
            Id::uninit(id.0),
        )
        .map_err(nccl)?;
        Ok(Self {
            gpu,
            comm,
            send: None,
            receive: None,
            reduce: None,
        })
    }

    /// This rank's number.
    pub fn rank(&self) -> u32 {
        self.comm.rank() as u32
    }

    /// Ranks in the group.
    pub fn ranks(&self) -> u32 {
        self.comm.world_size() as u32
    }

    /// Every rank contributes `local` (the same length everywhere); `gathered` receives all of
    /// them, rank after rank. Device buffers are kept from call to call.
    pub fn all_gather(&mut self, local: &[u32], gathered: &mut [u32]) -> Result<(), KernelError> {
        let total = local.len() * self.ranks() as usize;
        if gathered.len() != total || local.is_empty() {
            return Err(KernelError::InvalidInput(format!(
                "gathering {} values from each of {} ranks into {}",
                local.len(),
                self.ranks(),
                gathered.len()
            )));
        }
        let stream = self.gpu.stream();
        if self.send.as_ref().is_none_or(|b| b.len() != local.len()) {
            self.send = Some(stream.alloc_zeros::<u32>(local.len()).map_err(driver)?);
            self.receive = Some(stream.alloc_zeros::<u32>(total).map_err(driver)?);
        }
        let (Some(send), Some(receive)) = (self.send.as_mut(), self.receive.as_mut()) else {
            return Err(KernelError::Device("NCCL buffers missing".into()));
        };
        stream.memcpy_htod(local, send).map_err(driver)?;
        self.comm.all_gather(send, receive).map_err(nccl)?;
        stream.memcpy_dtoh(receive, gathered).map_err(driver)?;
        stream.synchronize().map_err(driver)
    }

    /// Every rank contributes `local`; `sums` receives their element-wise sum (wrapping, as
    /// unsigned 32-bit integers add) on every rank: NCCL's all-reduce, which moves about twice
    /// `local` per rank instead of every rank's copy.
    pub fn all_reduce_sum(&mut self, local: &[u32], sums: &mut [u32]) -> Result<(), KernelError> {
        if sums.len() != local.len() || local.is_empty() {
            return Err(KernelError::InvalidInput(format!(
                "reducing {} values into {}",
                local.len(),
                sums.len()
            )));
        }
        let stream = self.gpu.stream();
        if self
            .reduce
            .as_ref()
            .is_none_or(|(send, _)| send.len() != local.len())
        {
            let send = stream.alloc_zeros::<u32>(local.len()).map_err(driver)?;
            let receive = stream.alloc_zeros::<u32>(local.len()).map_err(driver)?;
            self.reduce = Some((send, receive));
        }
        let Some((send, receive)) = self.reduce.as_mut() else {
            return Err(KernelError::Device("NCCL buffers missing".into()));
        };
        stream.memcpy_htod(local, send).map_err(driver)?;
        self.comm
            .all_reduce(send, receive, &ReduceOp::Sum)
            .map_err(nccl)?;
        stream.memcpy_dtoh(receive, sums).map_err(driver)?;
        stream.synchronize().map_err(driver)
    }
}
