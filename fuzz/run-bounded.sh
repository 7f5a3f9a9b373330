#!/usr/bin/env bash
# Builds every cargo-fuzz target with the machine's one (stable) toolchain and runs each for a
# bounded time from its checked-in seed corpus. Exits non-zero if any target crashes, after
# running them all; crashing inputs land in fuzz/artifacts/<target>/. See README.md.
#
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated subset (default: every target)
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
# cargo-fuzz passes nightly-only flags (-Zsanitizer, sanitizer-coverage passes); stable rustc
# accepts them with RUSTC_BOOTSTRAP, and no other toolchain can be fetched on CI's machines.
export RUSTC_BOOTSTRAP=1
# No AddressSanitizer: the code fuzzed here is safe Rust, and ASan would double the build and
# halve the executions per second. Debug assertions and overflow checks stay on.
build=(-s none)

if ! command -v cargo-fuzz >/dev/null; then
    echo "== installing cargo-fuzz"
    time cargo install cargo-fuzz --locked --version 0.13.2
fi

echo "== building fuzz targets"
time cargo fuzz build "${build[@]}"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
failed=()
for t in $targets; do
    case "$t" in
        sip_scan | router) extra=(-dict=dict/sip.dict) ;;
        *) extra=() ;;
    esac
    # New inputs go to a scratch directory, so the checked-in corpus only changes by hand.
    scratch="$(mktemp -d)"
    mkdir -p "artifacts/$t"
    echo "== fuzzing $t for ${seconds}s"
    if ! cargo fuzz run "${build[@]}" "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${extra[@]}"; then
        failed+=("$t")
    fi
    rm -rf "$scratch"
done

if ((${#failed[@]})); then
    echo "fuzz targets that crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
