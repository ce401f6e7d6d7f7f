#!/usr/bin/env sh
# Fills fuzz/corpus/<target>/ from the committed seeds (fuzz/seeds/<target>/: fixtures trimmed
# to a few positions, streamed forms, executor answers, admin bodies, the chain-source decoder
# fixtures) and from the full vLLM recordings in ../shared/fixtures/ml-node. Two-document
# targets split their input at a 0xff byte. Run from anywhere; existing corpus files are kept.
set -eu

fuzz=$(cd "$(dirname "$0")" && pwd)
ml_node="$fuzz/../../shared/fixtures/ml-node"
chain="$fuzz/../crates/chain-source/tests/fixtures"

for seeds in "$fuzz"/seeds/*/; do
    target=$(basename "$seeds")
    mkdir -p "$fuzz/corpus/$target"
    cp "$seeds"* "$fuzz/corpus/$target/"
done

for target in completion_parse payload_decode executor_response scoring; do
    for fixture in "$ml_node"/*.json; do
        cp "$fixture" "$fuzz/corpus/$target/ml_node_$(basename "$fixture" .json)"
    done
done
pair() {
    { cat "$ml_node/$1.json"; printf '\377'; cat "$ml_node/$2.json"; } >"$fuzz/corpus/scoring/$3"
}
pair inference_response validation_response ml_node_pair
pair inference_response_int4 validation_response_fp8 ml_node_pair_int4_fp8

for fixture in "$chain"/*.json; do
    cp "$fixture" "$fuzz/corpus/chain_events/$(basename "$fixture" .json)"
done
