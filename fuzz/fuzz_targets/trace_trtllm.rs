//! Fuzz target: `ultraep_bench::fuzzing::trace_trtllm` (see that function for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ultraep_bench::fuzzing::trace_trtllm(data));
