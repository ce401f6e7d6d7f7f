//! `validator score ORIGINAL VALIDATION`: the engine's classic scoring of two chat-completion
//! files, through the same functions the engine calls.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};
use validator_core::scoring::{self, Score};

/// Scores the executor's response in `original` (plain or streamed chat-completion JSON) against
/// our node's successful answer in `validation` as the engine's classic path does
/// ([`scoring::score_classic`]: the original parsed and checked, then the comparison), and returns
/// the JSON line to print: `verdict`, `value`, `value_decimal` and, when a side cannot be scored,
/// `error`.
pub fn score_files(original: &Path, validation: &Path) -> anyhow::Result<Value> {
    let original_bytes =
        std::fs::read(original).with_context(|| format!("reading {}", original.display()))?;
    let validation_bytes =
        std::fs::read(validation).with_context(|| format!("reading {}", validation.display()))?;
    let (score, error) = match scoring::score_classic(&original_bytes, &validation_bytes) {
        Ok(score) => (score, None),
        Err(err) => (Score::invalid_inference(), Some(err.to_string())),
    };
    let decimal = score.value_decimal();
    let mut line = json!({
        "verdict": score.verdict.as_str(),
        "value": score.value,
        "value_decimal": {"value": decimal.value, "exponent": decimal.exponent},
    });
    if let (Some(error), Some(object)) = (error, line.as_object_mut()) {
        object.insert("error".into(), Value::String(error));
    }
    Ok(line)
}
