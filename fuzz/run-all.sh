#!/usr/bin/env bash
# Run every fuzz target for SECS seconds (default 120), minimize its corpus, and print the
# executions each run made. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets it use the nightly-only sanitizer flags.
#
#   fuzz/run-all.sh [SECS] [TARGET...]
#   FUZZ_SANITIZER=none fuzz/run-all.sh 60      # where AddressSanitizer is unavailable
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-120}
shift || true
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
san=${FUZZ_SANITIZER:-address}
dir_args=()
if [[ -n ${FUZZ_TARGET_DIR:-} ]]; then dir_args=(--target-dir "$FUZZ_TARGET_DIR"); fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(wire_request wire_response release tree_node join_token tarsplit tarsplit_columns
           import_docker_save import_oci_layout registry_request)
fi
mkdir -p logs
failed=0
for t in "${targets[@]}"; do
  if ! cargo fuzz run "${dir_args[@]}" -s "$san" "$t" -- -max_total_time="$secs" -timeout=10 -detect_leaks=0 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    failed=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  cargo fuzz cmin "${dir_args[@]}" -s "$san" "$t" >"logs/$t.cmin.log" 2>&1 || echo "$t: cmin failed, see fuzz/logs/$t.cmin.log"
  printf '%-20s %12s executions in %ss, corpus %s files\n' "$t" "${execs:-?}" "$secs" "$(ls "corpus/$t" | wc -l)"
done
exit $failed
