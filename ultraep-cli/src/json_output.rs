//! What every `--json` option prints: the value as pretty JSON and a newline.

use ultraep_bench::BenchError;

/// `value` as pretty JSON and a newline.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, BenchError> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|error| BenchError::InvalidProblem {
            source_name: "JSON output".into(),
            message: error.to_string(),
        })
}
