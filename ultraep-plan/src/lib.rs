//! The pure planner of ultraep: exact load in, plan out.
//!
//! After the router of an MoE layer, every rank holds the same all-gathered load matrix (tokens routed
//! from every source rank to every expert). From it the planner decides which hot experts get replicas
//! in which spare slots of colder ranks of the same scale-up domain, and the integer quota of tokens
//! every expert instance takes, so that every rank ends up with about the same number of tokens. It
//! also holds the baseline balancers ultraep is compared against.
//!
//! Status: the planner is issue 3 and is not written yet; this crate exports nothing so far.
//!
//! Who uses it: anyone who wants plans without the rest of ultraep (it is usable alone),
//! `ultraep-xfer`, `ultraep-kernels`, `ultraep-runtime` and `ultraep-bench`.
//!
//! What it may depend on: no other ultraep crate (it takes the domain of every rank as a plain table),
//! no CUDA, no I/O. Plans must be bit-identical on every machine, so its decisions use integers only.
