//! The JSON-lines trace of a run: every step's exact load, in the format `ultraep simulate
//! --trace` replays, with the step's metrics beside it.
//!
//! A header, then for every recorded step one load line per source rank and one metrics line:
//!
//! ```text
//! {"ultraep_trace": 1, "ranks": 8, "experts": 32, "layers": 2, "top_k": 4}
//! {"step": 0, "layer": 0, "rank": 0, "counts": [12, 0, 3, ...]}
//! ...
//! {"step": 0, "layer": 0, "metrics": {"initial_imbalance": 2.31, "imbalance": 1.004, ...}}
//! ```
//!
//! Steps are microbatches renumbered densely in the order they first appear; the first
//! successful step of every (microbatch, layer) is recorded (a retried or replanned step is not
//! recorded twice). A layout change ([`TraceWriter::record_layout`], after
//! [`crate::Engine::switch_layout`]) is a line with the layer's new homes, written before the
//! layer's next recorded step, the first one planned in it:
//!
//! ```text
//! {"step": 40, "layer": 3, "homes": [0, 0, 5, ...]}
//! ```

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write;

use ultraep_plan::{ExpertLayout, LoadMatrix};

use crate::{RuntimeError, StepReport};

/// Writes a run's trace to `out`.
///
/// ```
/// use ultraep_runtime::TraceWriter;
/// let mut out = Vec::new();
/// let writer = TraceWriter::new(&mut out, 8, 32, 2, Some(4))?;
/// drop(writer);
/// assert!(String::from_utf8(out)?.starts_with(r#"{"ultraep_trace": 1, "ranks": 8"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    ranks: usize,
    experts: usize,
    /// Microbatches in the order they first appeared: their index is their step number.
    microbatches: Vec<u32>,
    recorded: HashSet<(u32, u32)>,
    /// Every layer's layout change not yet written: it goes before the layer's next step.
    layouts: Vec<Option<Vec<u32>>>,
    line: String,
}

fn io_error(error: std::io::Error) -> RuntimeError {
    RuntimeError::Trace(error.to_string())
}

impl<W: Write> TraceWriter<W> {
    /// Starts a trace of `layers` MoE layers of `ranks x experts` loads, writing the header.
    pub fn new(
        mut out: W,
        ranks: u32,
        experts: u32,
        layers: u32,
        top_k: Option<u32>,
    ) -> Result<Self, RuntimeError> {
        let top_k = top_k.map_or(String::new(), |k| format!(", \"top_k\": {k}"));
        writeln!(
            out,
            "{{\"ultraep_trace\": 1, \"ranks\": {ranks}, \"experts\": {experts}, \"layers\": {layers}{top_k}}}"
        )
        .map_err(io_error)?;
        Ok(Self {
            out,
            ranks: ranks as usize,
            experts: experts as usize,
            microbatches: Vec::new(),
            recorded: HashSet::new(),
            layouts: vec![None; layers as usize],
            line: String::new(),
        })
    }

    /// Records the step `report` describes, planned for `loads`.
    pub fn record(
        &mut self,
        report: &StepReport,
        loads: LoadMatrix<'_>,
    ) -> Result<(), RuntimeError> {
        if (loads.ranks(), loads.experts()) != (self.ranks, self.experts) {
            return Err(RuntimeError::InvalidInput(format!(
                "a load of {} x {} for a trace of {} x {}",
                loads.ranks(),
                loads.experts(),
                self.ranks,
                self.experts
            )));
        }
        let (microbatch, layer) = (report.step.microbatch, report.step.layer);
        if !self.recorded.insert((microbatch, layer)) {
            return Ok(());
        }
        let step = match self.microbatches.iter().position(|&m| m == microbatch) {
            Some(step) => step,
            None => {
                self.microbatches.push(microbatch);
                self.microbatches.len() - 1
            }
        };
        if let Some(homes) = self.layouts.get_mut(layer as usize).and_then(Option::take) {
            self.write_homes(step, layer, &homes)?;
        }
        self.write_load(step, layer, loads.as_slice())?;
        let metrics = &report.metrics;
        writeln!(
            self.out,
            "{{\"step\": {step}, \"layer\": {layer}, \"metrics\": {{\"initial_imbalance\": {:.6}, \
             \"imbalance\": {:.6}, \"replicas\": {}, \"copies\": {}, \"copies_skipped\": {}, \
             \"bytes_moved\": {}, \"planning_ns\": {}, \"transfer_ns\": {}}}}}",
            metrics.initial_imbalance(),
            metrics.imbalance(),
            metrics.replicas,
            report.copies,
            report.copies_skipped,
            report.bytes_moved,
            report.planning.as_nanos(),
            report.transfer.as_nanos()
        )
        .map_err(io_error)
    }

    /// Writes one load as step `step` of `layer`: a line per source rank of `counts` (`ranks x
    /// experts`, row-major). [`TraceWriter::record`] writes an engine's steps through it; a tool
    /// that holds loads of its own (a recorded or synthetic trace) writes them with it directly,
    /// so that there is one writer of the format.
    pub fn write_load(
        &mut self,
        step: usize,
        layer: u32,
        counts: &[u32],
    ) -> Result<(), RuntimeError> {
        if counts.len() != self.ranks * self.experts {
            return Err(RuntimeError::InvalidInput(format!(
                "{} counts for a trace of {} x {}",
                counts.len(),
                self.ranks,
                self.experts
            )));
        }
        for rank in 0..self.ranks {
            self.write_list(
                format_args!(
                    "{{\"step\": {step}, \"layer\": {layer}, \"rank\": {rank}, \"counts\": ["
                ),
                &counts[rank * self.experts..][..self.experts],
            )?;
        }
        Ok(())
    }

    /// Writes that `layer`'s masters live at `homes` (the home rank of every expert) from step
    /// `step` on.
    pub fn write_homes(
        &mut self,
        step: usize,
        layer: u32,
        homes: &[u32],
    ) -> Result<(), RuntimeError> {
        if homes.len() != self.experts {
            return Err(RuntimeError::InvalidInput(format!(
                "{} homes for a trace of {} experts",
                homes.len(),
                self.experts
            )));
        }
        self.write_list(
            format_args!("{{\"step\": {step}, \"layer\": {layer}, \"homes\": ["),
            homes,
        )
    }

    /// Writes one line: `head` (the record up to its list's opening bracket), `values`, `]}`.
    fn write_list(
        &mut self,
        head: std::fmt::Arguments<'_>,
        values: &[u32],
    ) -> Result<(), RuntimeError> {
        self.line.clear();
        // Writing to a String cannot fail.
        let _ = self.line.write_fmt(head);
        for (index, value) in values.iter().enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            let _ = write!(self.line, "{separator}{value}");
        }
        self.line.push_str("]}");
        writeln!(self.out, "{}", self.line).map_err(io_error)
    }

    /// Records that `layer`'s masters now live where `layout` says (after
    /// [`crate::Engine::switch_layout`]): the change is written with the layer's next recorded
    /// step, and one the layer never steps in is not written. Readers assume balanced blocks
    /// (the experts in ascending order, the first ranks one more when they do not divide) until
    /// told otherwise: an engine that starts in another layout records it before its first step.
    pub fn record_layout(&mut self, layer: u32, layout: &ExpertLayout) -> Result<(), RuntimeError> {
        if layout.num_ranks() as usize != self.ranks
            || layout.num_experts() as usize != self.experts
        {
            return Err(RuntimeError::InvalidInput(format!(
                "a layout of {} x {} for a trace of {} x {}",
                layout.num_ranks(),
                layout.num_experts(),
                self.ranks,
                self.experts
            )));
        }
        let layers = self.layouts.len() as u32;
        let pending = self
            .layouts
            .get_mut(layer as usize)
            .ok_or(RuntimeError::UnknownLayer { layer, layers })?;
        *pending = Some(layout.homes().to_vec());
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, RuntimeError> {
        self.out.flush().map_err(io_error)?;
        Ok(self.out)
    }
}
