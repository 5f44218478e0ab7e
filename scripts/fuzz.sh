#!/usr/bin/env bash
# Fuzzes netguard's outside inputs with libFuzzer (cargo-fuzz): docs/reliability.md.
#
#   scripts/fuzz.sh [TARGET...] [--time SECS] [--parallel]   run (default: every target, 60 s)
#   scripts/fuzz.sh --seeds                                  rewrite fuzz/corpus/*/seed-*
#   scripts/fuzz.sh --figures [LOGDIR]                       figures of finished/running runs
#
# Targets: policy inventory docker nft klog. Each run starts from the committed seeds
# (fuzz/corpus/TARGET) plus what earlier runs found (target/fuzz/corpus/TARGET, where new
# inputs go), first replays fuzz/regressions/TARGET/*, and logs to target/fuzz/logs/TARGET.log
# (FUZZ_WORK overrides target/fuzz). A crash is written to fuzz/artifacts/TARGET/ and makes
# the script exit 1. FUZZ_BUILD_FLAGS adds cargo-fuzz build flags (`-a`: debug assertions
# and overflow checks, a full rebuild).
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...) to rustc. Only the stable
# toolchain is needed: RUSTC_BOOTSTRAP=1 makes stable rustc accept them. cargo-fuzz is
# installed from crates.io when missing, except with CI=true, where scripts/install-deps.sh
# must have installed it and its absence is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(policy inventory docker nft klog)
targets=()
secs=60
parallel=false
mode=run
logdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --time) secs="$2"; shift 2 ;;
    --time=*) secs="${1#--time=}"; shift ;;
    --parallel) parallel=true; shift ;;
    --seeds) mode=seeds; shift ;;
    --figures) mode=figures; shift; if [ $# -gt 0 ]; then logdir="$1"; shift; fi ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "scripts/fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *)
      if [[ " ${ALL[*]} " != *" $1 "* ]]; then
        echo "scripts/fuzz.sh: unknown target $1 (targets: ${ALL[*]})" >&2
        exit 2
      fi
      targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")
work="${FUZZ_WORK:-$PWD/target/fuzz}"

# One line per log: executions, coverage, features, corpus, crashes, time.
figures() {
  local dir="$1"
  printf '%-10s %12s %8s %8s %8s %8s %8s %s\n' target executions exec/s cov ft corpus crashes status
  for log in "$dir"/*.log; do
    [ -e "$log" ] || continue
    local t last execs rate cov ft corp crashes status
    t="$(basename "$log" .log)"
    # The final `#N DONE` line, else the last progress line of a run still going.
    # A target that crashed on its first input has no status line: the row says so.
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)"
    [ -n "$execs" ] || execs="$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")"
    rate="$(grep -o 'stat::average_exec_per_sec: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)"
    [ -n "$rate" ] || rate="$(grep -o 'exec/s: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)"
    cov="$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)"
    ft="$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)"
    corp="$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)"
    crashes="$(grep -cE '^==[0-9]+==ERROR|^thread .* panicked|deadly signal|ERROR: libFuzzer' "$log" || true)"
    if grep -q 'DONE' <<<"$last"; then status=done; elif [ "$crashes" != 0 ]; then status=crashed; else status=running; fi
    printf '%-10s %12s %8s %8s %8s %8s %8s %s\n' "$t" "$execs" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "$status"
  done
}

case "$mode" in
  seeds) exec python3 scripts/fuzz-seeds.py ;;
  figures) figures "${logdir:-$work/logs}"; exit 0 ;;
esac

if ! command -v cargo-fuzz >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "scripts/fuzz.sh: cargo-fuzz is missing (scripts/install-deps.sh installs it)" >&2
    exit 1
  fi
  echo "installing: cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

echo "== building fuzz targets (release, AddressSanitizer): ${targets[*]}"
start=$(date +%s)
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086 # FUZZ_BUILD_FLAGS is a list of flags, e.g. `-a`
  cargo fuzz build -O ${FUZZ_BUILD_FLAGS:-} "$t"
done
echo "built in $(( $(date +%s) - start )) s"

bin() { echo "fuzz/target/x86_64-unknown-linux-gnu/release/$1"; }
mkdir -p "$work/logs"

run_one() {
  local t="$1" log="$work/logs/$1.log"
  mkdir -p "$work/corpus/$t" "fuzz/artifacts/$t"
  # Every input that ever crashed a target must keep passing.
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    "$(bin "$t")" fuzz/regressions/"$t"/* >"$work/logs/$t.regressions.txt" 2>&1 || {
      echo "$t: a regression input fails again: $work/logs/$t.regressions.txt" >&2
      return 1
    }
  fi
  "$(bin "$t")" "$work/corpus/$t" "fuzz/corpus/$t" \
    -max_total_time="$secs" -timeout=25 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
}

failed=()
if $parallel; then
  pids=()
  for t in "${targets[@]}"; do
    run_one "$t" & pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${targets[$i]}")
  done
else
  for t in "${targets[@]}"; do
    echo "== fuzzing $t for $secs s"
    run_one "$t" || failed+=("$t")
  done
fi

figures "$work/logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "scripts/fuzz.sh: crashes or failures in: ${failed[*]} (inputs in fuzz/artifacts/, logs in $work/logs/)" >&2
  exit 1
fi
