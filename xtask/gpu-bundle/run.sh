#!/usr/bin/env bash
# Runs ultraep's GPU trials and benchmarks on a machine with the CUDA driver (580+) and NVRTC 13.0,
# and no Rust: `cargo xtask gpu-bundle` builds this folder. Every step runs under its own timeout
# and the script goes on whatever a step does; the timeouts add up to 8 minutes. The order gets
# the most information first: the kernels bit for bit against their CPU references, then the
# benchmarks, the runtime's single-process trials, the PyTorch layer's trial, and last the
# multi-process CUDA IPC trial. At the end: results/summary.md and results/summary.json (every
# step's outcome, seconds and figures), and every step's output in results/<step>.log.
#
#   bash run.sh             on a GPU machine: a missing GPU, NVRTC or NCCL fails the trials
#   bash run.sh --dry-run   anywhere: every step starts and reports its trials as ignored
cd "$(dirname "$0")"
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
python=${PYTHON:-python3}

# CUDA's libraries: the toolkit's folders, and the NVIDIA wheels of the machine's Python, after
# any the caller put on LD_LIBRARY_PATH (a pinned NVRTC comes first: a newer one, such as a
# PyTorch wheel's, writes PTX the driver and ptxas of CUDA 13.0 cannot read).
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $("$python" - <<'PY' 2>/dev/null
import glob, os, site
for root in site.getsitepackages():
    for lib in glob.glob(os.path.join(root, "nvidia", "*", "lib")):
        print(lib)
PY
    ); do
  if [ -n "$dir" ] && [ -d "$dir" ]; then export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir"; fi
done
# cudarc looks for NCCL as libnccl.so (and .so.13 ... .so.1), NCCL installs libnccl.so.2.
mkdir -p lib
nccl=$(for dir in ${LD_LIBRARY_PATH//:/ } /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -e "$dir/libnccl.so.2" ] && { echo "$dir/libnccl.so.2"; break; }; done)
if [ -n "$nccl" ]; then
  ln -sf "$nccl" lib/libnccl.so
  export LD_LIBRARY_PATH="$PWD/lib:$LD_LIBRARY_PATH"
fi
# ptxas, where there is one: the NVRTC trials then assemble every kernel and read its registers.
for candidate in "${ULTRAEP_PTXAS:-}" "$(command -v ptxas 2>/dev/null)" /usr/local/cuda/bin/ptxas; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then export ULTRAEP_PTXAS="$candidate"; break; fi
done
if [ "$dry_run" = 0 ]; then
  export ULTRAEP_REQUIRE_GPU=1 ULTRAEP_REQUIRE_NVRTC=1
fi

mkdir -p results
: > results/steps.tsv
# step NAME SECONDS COMMAND...: runs COMMAND with its output in results/NAME.log, for at most
# SECONDS, and records its outcome: pass, fail, ignored (it ran, and found no GPU to run on),
# timeout, or skipped (not started: it might not have ended within the budget).
step() {
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  # A step that could run past the caller's budget (ULTRAEP_BUNDLE_SECONDS, 480 by default) is
  # skipped, so the last ones (the 8-process trial) run only if time is left.
  if [ $((SECONDS + limit)) -gt "${ULTRAEP_BUNDLE_SECONDS:-480}" ]; then
    printf '%s\tskipped\t0\t0\n' "$name" >> results/steps.tsv
    echo "== $name skipped: ${limit} s would pass the ${ULTRAEP_BUNDLE_SECONDS:-480} s budget"
    return
  fi
  echo "== $name (at most ${limit} s): $*"
  timeout --kill-after=5 "$limit" "$@" > "results/$name.log" 2>&1
  local rc=$? outcome=pass
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    outcome=timeout
  elif [ $rc != 0 ]; then
    outcome=fail
  elif grep -qE "test result: ok\. 0 passed; 0 failed; [1-9][0-9]* ignored|no GPU" "results/$name.log"; then
    outcome=ignored
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$outcome" "$rc" "$((SECONDS - started))" >> results/steps.tsv
  echo "   $outcome ($((SECONDS - started)) s)"
}

# Expected times on an H100 beside each limit: NVRTC compiles 8 kernels for 3 architectures
# (about 10 s); each kernel trial is a process with its own CUDA context (about 3 s each, 9 of
# them); under a sanitizer the three streaming trials take a few seconds each (shared-memory
# races, then barriers reached by part of a block); the benchmarks move a few GB (about 30 s);
# the runtime trials plan and train a few steps (about 30 s); the PyTorch trial imports torch and
# runs one layer (about 20 s); the IPC trials start 2 processes (about 15 s), then 8 (about 60 s).
step nvrtc 30 ./nvrtc
step kernels 70 ./gpu
# The streaming trials under compute-sanitizer, where the machine has it: shared-memory races,
# then barriers that part of a block never reaches.
if command -v compute-sanitizer > /dev/null && [ "$dry_run" = 0 ]; then
  step racecheck 40 compute-sanitizer --tool racecheck --error-exitcode 1 \
    --target-processes all ./gpu streaming
  step synccheck 30 compute-sanitizer --tool synccheck --error-exitcode 1 \
    --target-processes all ./gpu streaming
else
  printf 'racecheck\tignored\t0\t0\nsynccheck\tignored\t0\t0\n' >> results/steps.tsv
fi
step benchmarks 65 ./gpu-bench --bench
step runtime 65 ./runtime-gpu --skip cuda_ipc
step torch 60 bash -c "\"$python\" -m pip install --quiet --no-deps --no-index --target pydeps wheels/*.whl && PYTHONPATH=pydeps \"$python\" test_gpu.py"
step ipc2 40 ./runtime-gpu cuda_ipc_training_on_2_processes_matches_threads --exact
step ipc8 80 ./runtime-gpu cuda_ipc_training_on_8_processes_matches_threads --exact

# The summary: every step's outcome, then every figure the steps printed (their tables).
{
  echo "| step | outcome | exit | seconds |"
  echo "|---|---|---|---|"
  while IFS=$'\t' read -r name outcome rc seconds; do
    echo "| $name | $outcome | $rc | $seconds |"
  done < results/steps.tsv
  echo
  for log in results/*.log; do
    if grep -q '^|' "$log"; then
      echo "### $(basename "$log" .log)"
      echo
      grep '^|' "$log"
      echo
    fi
  done
  grep -h "host synchronisations" results/torch.log 2>/dev/null
} > results/summary.md
{
  echo "{"
  echo "  \"dry_run\": $([ "$dry_run" = 1 ] && echo true || echo false),"
  echo "  \"steps\": ["
  first=1
  while IFS=$'\t' read -r name outcome rc seconds; do
    [ $first = 1 ] || echo ","
    first=0
    printf '    {"step": "%s", "outcome": "%s", "exit": %s, "seconds": %s}' "$name" "$outcome" "$rc" "$seconds"
  done < results/steps.tsv
  echo
  echo "  ],"
  echo "  \"figures\": ["
  first=1
  for log in results/*.log; do
    while IFS= read -r line; do
      [ $first = 1 ] || echo ","
      first=0
      escaped=${line//\\/\\\\}
      escaped=${escaped//\"/\\\"}
      printf '    {"step": "%s", "row": "%s"}' "$(basename "$log" .log)" "$escaped"
    done < <(grep '^|' "$log" | grep -v '^|---')
  done
  echo
  echo "  ]"
  echo "}"
} > results/summary.json
cat results/summary.md
# A failed or timed-out step fails the run (the summary is written first).
! grep -qP '\t(fail|timeout)\t' results/steps.tsv
