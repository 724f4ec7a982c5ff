//! The load matrix: tokens routed from every source rank to every expert in one microbatch.

use crate::PlanError;

/// A borrowed row-major view of `loads[source_rank][expert]`.
///
/// ```
/// use ultraep_plan::LoadMatrix;
/// let data = [5, 0, 1, 2, 3, 4];
/// let loads = LoadMatrix::new(&data, 2, 3)?;
/// assert_eq!(loads.get(1, 0), 2);
/// assert_eq!(loads.row(0), &[5, 0, 1]);
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadMatrix<'a> {
    data: &'a [u32],
    ranks: usize,
    experts: usize,
}

impl<'a> LoadMatrix<'a> {
    /// Views `data` as `ranks` rows of `experts` counts each.
    pub fn new(data: &'a [u32], ranks: usize, experts: usize) -> Result<Self, PlanError> {
        if ranks.checked_mul(experts) != Some(data.len()) {
            return Err(PlanError::LoadLength {
                rows: ranks,
                columns: experts,
                len: data.len(),
            });
        }
        Ok(Self {
            data,
            ranks,
            experts,
        })
    }

    /// Refuses a matrix that is not `ranks x experts` (the shape a balancer was built for).
    pub fn expect_shape(&self, ranks: usize, experts: usize) -> Result<(), PlanError> {
        if self.ranks != ranks || self.experts != experts {
            return Err(PlanError::LoadShape {
                rows: self.ranks,
                columns: self.experts,
                num_ranks: ranks as u32,
                num_experts: experts as u32,
            });
        }
        Ok(())
    }

    /// Source ranks (rows).
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Experts (columns).
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Tokens from `source` to `expert`.
    ///
    /// # Panics
    /// If either index is out of range, like slice indexing.
    pub fn get(&self, source: usize, expert: usize) -> u32 {
        self.data[source * self.experts + expert]
    }

    /// The counts of one source rank.
    ///
    /// # Panics
    /// If `source` is out of range, like slice indexing.
    pub fn row(&self, source: usize) -> &'a [u32] {
        &self.data[source * self.experts..(source + 1) * self.experts]
    }

    /// The whole matrix, row-major.
    pub fn as_slice(&self) -> &'a [u32] {
        self.data
    }
}
