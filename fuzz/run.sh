#!/usr/bin/env bash
# Coverage-guided fuzzing of csel-auth's parsers with cargo fuzz (libFuzzer, nightly toolchain):
# the rules parser, the path canonicalizer, the Authorization parser, and the decisions under
# examples/registry.rules. The invariants are in fuzz/checks.rs (also run by proptest in
# `cargo test`, tests/reliability/fuzz.rs).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 20 seconds, every target
#
# Each target's corpus (fuzz/corpus/TARGET, not committed) is seeded from the test data. A crash
# leaves its input in fuzz/artifacts/TARGET/ and fails the run; reproduce it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`. CSEL_FUZZ_TARGET_DIR sets the
# build directory (default fuzz/target).
# Without a nightly toolchain or cargo-fuzz the run is skipped (exit 0) with a message, unless
# CSEL_FUZZ_REQUIRED=1.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rules_parser canonicalize authorization decide)

skip() {
  echo "fuzz: skipped: $1"
  if [ "${CSEL_FUZZ_REQUIRED:-0}" = 1 ]; then exit 1; fi
  exit 0
}
cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 || skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"

# Seeds: one file per line of the test data.
seed() {
  local target="$1"
  local dir="corpus/$target"
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || return 0
  local n=0
  while IFS= read -r line; do
    n=$((n + 1))
    printf '%s' "$line" >"$dir/seed-$n"
  done
}
awk '$1 ~ /^(accept|reject)$/ {print $3}' ../tests/data/paths.txt |
  cat - <(awk '!/^#/ && NF >= 3 {print $3}' ../tests/data/attacks.txt) \
    <(awk '!/^#/ && NF >= 4 {print $4}' ../tests/data/hostile.txt) | seed canonicalize
awk -F ' <= ' '!/^#/ && NF == 2 {print $2}' ../tests/data/authorization.txt | seed authorization
awk '!/^#/ && NF >= 3 {print "\001\001\001" $3}' ../tests/data/attacks.txt | seed decide
if [ ! -d corpus/rules_parser ] || [ -z "$(ls -A corpus/rules_parser 2>/dev/null)" ]; then
  mkdir -p corpus/rules_parser
  cp ../examples/*.rules ../tests/data/rules/*.rules corpus/rules_parser/
fi

target_dir="${CSEL_FUZZ_TARGET_DIR:-target}"
mkdir -p logs
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  log="logs/$target.log"
  status=0
  cargo +nightly fuzz run --target-dir "$target_dir" "$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/, the log in fuzz/$log"
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no failure"
