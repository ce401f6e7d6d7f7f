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
/// Either path may be `-`, standard input (not both).
pub fn score_files(original: &Path, validation: &Path) -> anyhow::Result<Value> {
    if is_stdin(original) && is_stdin(validation) {
        anyhow::bail!("only one of the two files can be `-` (standard input)");
    }
    let original_bytes = read(original)?;
    let validation_bytes = read(validation)?;
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

/// Whether the line [`score_files`] returned has the `invalid` verdict.
pub fn is_invalid(line: &Value) -> bool {
    line["verdict"] == scoring::Verdict::Invalid.as_str()
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    if is_stdin(path) {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("reading standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
