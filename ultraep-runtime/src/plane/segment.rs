//! One rank's expert memory as one mapped segment: its masters, its slots, and the words peers
//! signal through. This is the only module of the crate with `unsafe` code: memory that other
//! threads and other processes write can be reached only through raw pointers.
//!
//! A segment is either anonymous (ranks that are threads of one process share it through an
//! `Arc`) or a named file under `/dev/shm` that peer processes map, the CPU counterpart of
//! CUDA IPC and of NVLink load/store. The owner of a named segment holds an exclusive lock on
//! its file for as long as it lives; the kernel drops the lock when the process ends, however it
//! ends, so a peer that can take a shared lock on the file knows the owner is gone.
//!
//! Layout, every offset a multiple of 64:
//! - a header (magic, shape, owner's process id), written last on creation;
//! - one checksum word per master, published by the owner before it sends the master's tiles;
//! - one arrival word per tile of every slot: the transfer round in which the tile last landed;
//! - one word per slot: the gradient hand-off token (written, then acknowledged);
//! - one word per slot: the transfer round its owner has opened the slot for. A sender stores
//!   into a slot only in the round its owner has opened it for, so a rank that runs ahead never
//!   overwrites a slot its owner is still receiving or computing with in an earlier call;
//! - the masters, then the slots, each `state_bytes` rounded up to 64.
//!
//! The protocol that makes the raw accesses sound: a region is written only by its owner
//! (masters, and its own slot gradients) or, for a slot, by the senders of a transfer round the
//! owner takes part in, and a reader touches a slot's bytes only after it has observed, with
//! acquire ordering, the arrival words (or the gradient token) that the writers stored with
//! release ordering after their last byte.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use ultraep_xfer::Region;

use crate::RuntimeError;

const MAGIC: u64 = 0x0075_6c74_7261_6570; // "ultraep"
const HEADER_BYTES: usize = 64;

/// The shape of a segment; two ranks agree on it before one maps the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentLayout {
    pub masters: u32,
    pub slots: u16,
    pub state_bytes: u64,
    pub tile_bytes: u32,
}

fn align64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

impl SegmentLayout {
    pub fn tiles(&self) -> usize {
        self.state_bytes.div_ceil(u64::from(self.tile_bytes.max(1))) as usize
    }

    fn checksums_at(&self) -> usize {
        HEADER_BYTES
    }

    fn tile_words_at(&self) -> usize {
        align64(self.checksums_at() + 8 * self.masters as usize)
    }

    fn slot_words_at(&self) -> usize {
        align64(self.tile_words_at() + 8 * usize::from(self.slots) * self.tiles())
    }

    fn open_words_at(&self) -> usize {
        self.slot_words_at() + 8 * usize::from(self.slots)
    }

    fn data_at(&self) -> usize {
        align64(self.open_words_at() + 8 * usize::from(self.slots))
    }

    fn stride(&self) -> usize {
        align64(self.state_bytes as usize)
    }

    /// Bytes of the whole segment; an error where they would not fit the address space.
    pub fn bytes(&self) -> Result<usize, RuntimeError> {
        let regions = u64::from(self.masters) + u64::from(self.slots);
        regions
            .checked_mul(self.stride() as u64)
            .and_then(|data| data.checked_add(self.data_at() as u64))
            .filter(|&total| total <= isize::MAX as u64)
            .map(|total| total as usize)
            .ok_or_else(|| {
                RuntimeError::InvalidConfig(format!(
                    "{regions} expert states of {} bytes do not fit in memory",
                    self.state_bytes
                ))
            })
    }

    /// Bytes of expert state proper: masters plus slots.
    pub fn state_bytes_total(&self) -> u64 {
        (u64::from(self.masters) + u64::from(self.slots)) * self.state_bytes
    }

    fn region_at(&self, region: Region) -> Option<usize> {
        let index = match region {
            Region::Master { index } if index < self.masters => index as usize,
            Region::Slot { slot } if slot < self.slots => self.masters as usize + usize::from(slot),
            _ => return None,
        };
        Some(self.data_at() + index * self.stride())
    }
}

/// One rank's mapped expert memory.
#[derive(Debug)]
pub(crate) struct Segment {
    map: MmapRaw,
    layout: SegmentLayout,
    /// Named segments: the file (locked exclusively by its owner) and, for the owner, its path,
    /// removed when the owner drops it.
    file: Option<File>,
    owned_path: Option<PathBuf>,
}

impl Segment {
    /// A zeroed segment private to this process.
    pub fn anonymous(layout: SegmentLayout) -> Result<Self, RuntimeError> {
        let bytes = layout.bytes()?;
        let map = MmapOptions::new()
            .len(bytes.max(1))
            .map_anon()
            .map_err(|error| io_error("mapping anonymous expert memory", &error))?;
        let segment = Self {
            map: MmapRaw::from(map),
            layout,
            file: None,
            owned_path: None,
        };
        segment.write_header();
        Ok(segment)
    }

    /// A zeroed segment named `path` that peer processes map with [`Segment::open`]. It is built
    /// under a temporary name and renamed into place complete, so a peer never maps half of it.
    pub fn create(path: &Path, layout: SegmentLayout) -> Result<Self, RuntimeError> {
        let bytes = layout.bytes()?;
        let staging = path.with_extension(format!("staging-{}", std::process::id()));
        let what =
            |error: std::io::Error| io_error(&format!("creating {}", path.display()), &error);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&staging)
            .map_err(what)?;
        file.set_len(bytes.max(1) as u64).map_err(what)?;
        // Back every page now: a sparse file on a full /dev/shm would kill the first process that
        // touches an unbacked page (SIGBUS) instead of failing here with an error.
        let zeros = vec![0u8; (1 << 20).min(bytes.max(1))];
        let mut at = 0;
        while at < bytes.max(1) {
            let len = zeros.len().min(bytes.max(1) - at);
            std::os::unix::fs::FileExt::write_all_at(&file, &zeros[..len], at as u64)
                .map_err(what)?;
            at += len;
        }
        file.lock().map_err(what)?;
        let map = MmapOptions::new()
            .len(bytes.max(1))
            .map_raw(&file)
            .map_err(what)?;
        let segment = Self {
            map,
            layout,
            file: Some(file),
            owned_path: Some(path.to_path_buf()),
        };
        segment.write_header();
        std::fs::rename(&staging, path).map_err(what)?;
        Ok(segment)
    }

    /// Maps a peer's segment if it exists and is complete: `Ok(None)` while it does not exist
    /// yet, an error if it exists with another shape.
    pub fn open(path: &Path, layout: SegmentLayout) -> Result<Option<Self>, RuntimeError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&format!("opening {}", path.display()), &error)),
        };
        let bytes = layout.bytes()?;
        let what = |error: std::io::Error| io_error(&format!("mapping {}", path.display()), &error);
        let len = file.metadata().map_err(what)?.len();
        if len != bytes.max(1) as u64 {
            return Err(RuntimeError::InvalidConfig(format!(
                "{} holds {len} bytes, this rank expects {bytes}: the ranks were built with \
                 different configurations",
                path.display()
            )));
        }
        let map = MmapOptions::new()
            .len(bytes.max(1))
            .map_raw(&file)
            .map_err(what)?;
        let segment = Self {
            map,
            layout,
            file: Some(file),
            owned_path: None,
        };
        if segment.header_word(0).load(Ordering::Acquire) != MAGIC
            || segment.header_word(1).load(Ordering::Relaxed) != u64::from(layout.masters)
            || segment.header_word(2).load(Ordering::Relaxed) != u64::from(layout.slots)
            || segment.header_word(3).load(Ordering::Relaxed) != layout.state_bytes
            || segment.header_word(4).load(Ordering::Relaxed) != u64::from(layout.tile_bytes)
        {
            return Err(RuntimeError::InvalidConfig(format!(
                "{} has another shape than this rank expects: the ranks were built with \
                 different configurations",
                path.display()
            )));
        }
        Ok(Some(segment))
    }

    fn write_header(&self) {
        let layout = self.layout;
        self.header_word(1)
            .store(u64::from(layout.masters), Ordering::Relaxed);
        self.header_word(2)
            .store(u64::from(layout.slots), Ordering::Relaxed);
        self.header_word(3)
            .store(layout.state_bytes, Ordering::Relaxed);
        self.header_word(4)
            .store(u64::from(layout.tile_bytes), Ordering::Relaxed);
        self.header_word(5)
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        self.header_word(0).store(MAGIC, Ordering::Release);
    }

    pub fn layout(&self) -> SegmentLayout {
        self.layout
    }

    /// Whether the segment's owner is alive. An anonymous segment lives in this process; a named
    /// one is alive while its owner holds the lock on its file.
    pub fn owner_alive(&self) -> bool {
        match (&self.file, &self.owned_path) {
            (None, _) | (Some(_), Some(_)) => true,
            (Some(file), None) => match file.try_lock_shared() {
                Ok(()) => {
                    // The lock was free: the owner is gone. Let go again so that a later
                    // check gives the same answer.
                    let _ = file.unlock();
                    false
                }
                Err(_) => true,
            },
        }
    }

    fn word_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: the offset is 8-aligned (the mapping is page-aligned) and in bounds, the
        // mapping lives as long as `self`, and every access to these words, from any thread or
        // process, is atomic.
        unsafe { &*self.map.as_mut_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn header_word(&self, index: usize) -> &AtomicU64 {
        self.word_at(8 * index)
    }

    /// The checksum the owner published for master `index`.
    pub fn checksum_word(&self, index: u32) -> &AtomicU64 {
        debug_assert!(index < self.layout.masters);
        self.word_at(self.layout.checksums_at() + 8 * index as usize)
    }

    /// The round in which tile `tile` of slot `slot` last landed.
    pub fn tile_word(&self, slot: u16, tile: usize) -> &AtomicU64 {
        debug_assert!(slot < self.layout.slots && tile < self.layout.tiles());
        let index = usize::from(slot) * self.layout.tiles() + tile;
        self.word_at(self.layout.tile_words_at() + 8 * index)
    }

    /// The gradient hand-off word of slot `slot`.
    pub fn slot_word(&self, slot: u16) -> &AtomicU64 {
        debug_assert!(slot < self.layout.slots);
        self.word_at(self.layout.slot_words_at() + 8 * usize::from(slot))
    }

    /// The transfer round slot `slot`'s owner has opened it for.
    pub fn open_word(&self, slot: u16) -> &AtomicU64 {
        debug_assert!(slot < self.layout.slots);
        self.word_at(self.layout.open_words_at() + 8 * usize::from(slot))
    }

    fn region_ptr(&self, region: Region) -> Result<*mut u8, RuntimeError> {
        let at = self.layout.region_at(region).ok_or_else(|| {
            RuntimeError::InvalidInput(format!("no {region:?} in this rank's memory"))
        })?;
        // SAFETY: `region_at` returns offsets of whole regions inside the mapping.
        Ok(unsafe { self.map.as_mut_ptr().add(at) })
    }

    /// The bytes of `region`. The caller keeps the protocol of the module: nobody writes the
    /// region while the borrow lives (a master is written only by its owner through
    /// [`Segment::region_mut`], which needs `&mut`; a slot only in a transfer round its owner is
    /// in, which the engine starts only with no borrow out).
    pub fn region(&self, region: Region) -> Result<&[u8], RuntimeError> {
        let ptr = self.region_ptr(region)?;
        // SAFETY: in bounds (see `region_ptr`), valid for the life of `self`, and by the
        // protocol above not written while the borrow lives.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.layout.state_bytes as usize) })
    }

    /// The bytes of `region`, to write. Only the segment's owner writes this way, through the
    /// one [`Owner`] the segment was created with.
    pub fn region_mut<'a>(
        &'a self,
        owner: &'a mut Owner,
        region: Region,
    ) -> Result<&'a mut [u8], RuntimeError> {
        assert_eq!(
            owner.of,
            self.map.as_ptr() as usize,
            "the owner of another segment"
        );
        let ptr = self.region_ptr(region)?;
        // SAFETY: in bounds; the segment has one `Owner`, borrowed mutably for as long as the
        // slice lives, and every other borrow of a region in this process goes through the
        // owner's holder (the engine) too; by the protocol no peer writes a master, nor a slot
        // outside a round this rank is in.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, self.layout.state_bytes as usize) })
    }

    /// Copies `bytes` at `offset` from `region` of this segment into `to_region` of `to`.
    pub fn copy_to(
        &self,
        region: Region,
        offset: u64,
        bytes: u32,
        to: &Segment,
        to_region: Region,
    ) -> Result<(), RuntimeError> {
        let end = offset.checked_add(u64::from(bytes));
        if end.is_none_or(|end| end > self.layout.state_bytes)
            || to.layout.state_bytes != self.layout.state_bytes
        {
            return Err(RuntimeError::InvalidInput(format!(
                "a tile of {bytes} bytes at {offset} outside a {}-byte expert state",
                self.layout.state_bytes
            )));
        }
        let from = self.region_ptr(region)?;
        let into = to.region_ptr(to_region)?;
        if std::ptr::eq(from, into) {
            return Err(RuntimeError::InvalidInput(format!(
                "a tile copied onto itself ({region:?})"
            )));
        }
        // SAFETY: both ranges are inside their mappings (checked above), the regions differ
        // so the ranges do not overlap, and by the protocol no one else writes the destination
        // tile in this round nor the source while it is being read.
        unsafe {
            std::ptr::copy_nonoverlapping(
                from.add(offset as usize),
                into.add(offset as usize),
                bytes as usize,
            );
        }
        Ok(())
    }
}

/// The right to write a segment's regions: one per segment, kept by the rank that owns it.
#[derive(Debug)]
pub(crate) struct Owner {
    of: usize,
}

impl Owner {
    pub fn of(segment: &Segment) -> Self {
        Self {
            of: segment.map.as_ptr() as usize,
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            // Peers that mapped it keep their mapping; the name goes so that no new peer finds
            // a segment whose owner is gone.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn io_error(what: &str, error: &std::io::Error) -> RuntimeError {
    RuntimeError::Backend(format!("{what}: {error}"))
}
