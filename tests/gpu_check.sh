#!/usr/bin/env bash
# The GPU check (issue 22, item 5): on a lent CUDA machine, `pytest -m gpu` (which runs every notebook at
# smoke size on CUDA), then `python -m lab.commands.bench`; a summary and the logs go to $OUT.
#
# The GPU machine lacks papermill (and its pure-Python needs), ipykernel, lpips, the embedded weights and
# Fashion-MNIST, and reaches no network. So, once, here:
#   bash tests/gpu_check.sh --prepare
# downloads the wheels (Python 3.12, manylinux) and packs them with the converted weights
# ($LAB_CACHE/weights, with their manifests) and Fashion-MNIST into .gpucheck/payload.tar, cut into parts of
# PART_MB (55) MiB: .gpucheck/part_00, part_01, ... with .gpucheck/SHA256SUMS. A device call carries at most
# 64 MiB of working tree, so the parts travel over several calls to one warm machine (each call within
# 30 s of the last), every part but the last with --receive:
#   run(command="bash tests/gpu_check.sh --receive", carry=[".gpucheck/SHA256SUMS", ".gpucheck/part_00"])
#   ... part_01, part_02 likewise ...
#   run(command="bash tests/gpu_check.sh", carry=[".gpucheck/SHA256SUMS", ".gpucheck/part_03"], timeout_s=540)
# Each part is checked against its sha256 on arrival and kept in $STAGE (/tmp/lab-gpucheck); the last call
# joins them, checks the whole payload's sha256, installs the wheels into $STAGE/site, puts the weights in
# $STAGE/cache/weights, fully verifies them against their manifests (python -m lab.commands.verify), then runs
# the checks. `bash tests/gpu_check.sh --parts` prints the calls for the parts that --prepare made.
#
# On this CPU machine the same steps run from .venv with --cpu (no install, the user cache's weights):
#   bash tests/gpu_check.sh --cpu --notebooks 04_pca_maps
# --notebooks "A B" runs only those notebooks (default: all); --no-bench skips the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=run CPU=0 NOTEBOOKS="" BENCH=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --receive) MODE=receive ;;
    --parts) MODE=parts ;;
    --cpu) CPU=1 ;;
    --no-bench) BENCH=0 ;;
    --notebooks) shift; NOTEBOOKS=${1:?--notebooks needs names, e.g. --notebooks \"00_explorer 04_pca_maps\"} ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --prepare, --receive, --parts, --cpu, --notebooks \"A B\", --no-bench)" >&2; exit 2 ;;
  esac
  shift
done
PACK=.gpucheck
STAGE=${GPU_CHECK_STAGE:-/tmp/lab-gpucheck}
PART_MB=${PART_MB:-55}
GPU_PY=${GPU_PY:-python3}  # the image's Python, which holds torch
OUTDIR=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUTDIR"
USER_CACHE=${LAB_CACHE:-$HOME/.cache/latent-geometry-lab}
# what the GPU machine's image lacks of papermill's, ipykernel's and lpips's needs (versions as in .venv)
WHEELS="asttokens==3.0.2 cffi==2.1.1 comm==0.2.3 debugpy==1.8.22 entrypoints==0.4.2 executing==2.3.0
fastjsonschema==2.22.3 ipykernel==7.4.0 ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-client==8.10.0 jupyter-core==5.9.1 lpips==0.1.4
matplotlib-inline==0.2.2 nbclient==0.11.0 nbformat==5.11.1 nest-asyncio2==1.7.4 papermill==2.7.0 parso==0.8.7
pexpect==4.9.0 platformdirs==4.14.9 prompt-toolkit==3.0.53 ptyprocess==0.7.0 pure-eval==0.2.4 pycparser==3.12
pyzmq==27.3.0 referencing==0.37.0 rpds-py==2026.9.1 stack-data==0.6.3 tenacity==9.2.1 tornado==6.6.1
traitlets==5.16.1 tzdata==2026.6 wcwidth==0.9.4"

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUTDIR/summary.txt"; }

print_parts() {
  local parts; parts=$(ls "$PACK"/part_* 2>/dev/null | sort)
  local last; last=$(echo "$parts" | tail -n 1)
  for p in $parts; do
    if [ "$p" = "$last" ]; then
      echo "run(command=\"bash tests/gpu_check.sh\", carry=[\"$PACK/SHA256SUMS\", \"$p\"], timeout_s=540)"
    else
      echo "run(command=\"bash tests/gpu_check.sh --receive\", carry=[\"$PACK/SHA256SUMS\", \"$p\"])"
    fi
  done
}

prepare() {
  local PY=${PY:-.venv/bin/python}
  rm -rf "$PACK/build" "$PACK"/part_* "$PACK/SHA256SUMS" "$PACK/payload.tar"
  mkdir -p "$PACK/build/wheels" "$PACK/build/weights" "$PACK/build/fashion"
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$PACK/build/wheels" $WHEELS || { echo "pip download failed" >&2; exit 1; }
  local w="$USER_CACHE/weights"
  ls "$w"/*.safetensors >/dev/null 2>&1 || { echo "no converted weights in $w: run python -m lab.commands.weights fetch" >&2; exit 1; }
  cp "$w"/*.safetensors "$w"/*.json "$PACK/build/weights/"
  local fashion; fashion=$($PY -c "from lab.data import fashion_dir; print(fashion_dir())") || exit 1
  cp "$fashion"/*.gz "$PACK/build/fashion/"
  tar -C "$PACK/build" -cf "$PACK/payload.tar" wheels weights fashion
  split -b "${PART_MB}M" -d "$PACK/payload.tar" "$PACK/part_"
  (cd "$PACK" && sha256sum payload.tar part_* > SHA256SUMS)
  rm -rf "$PACK/build"
  echo "packed $(du -h "$PACK/payload.tar" | cut -f1) into $(ls "$PACK"/part_* | wc -l) parts of at most $PART_MB MiB; the device calls:"
  rm -f "$PACK/payload.tar"
  print_parts
}

receive() {  # check each carried part and keep it in $STAGE (it outlives the call on a warm machine)
  [ -f "$PACK/SHA256SUMS" ] || { log "no $PACK/SHA256SUMS: carry it with the part (bash tests/gpu_check.sh --parts)"; return 1; }
  mkdir -p "$STAGE"
  cp "$PACK/SHA256SUMS" "$STAGE/"
  for p in "$PACK"/part_*; do
    [ -f "$p" ] || continue
    if (cd "$PACK" && grep " $(basename "$p")\$" SHA256SUMS | sha256sum -c --quiet -); then
      cp "$p" "$STAGE/" && log "received $(basename "$p")"
    else
      log "BAD $(basename "$p"): its sha256 differs from SHA256SUMS; carry it again"
    fi
  done
  local want have
  want=$(grep -c " part_" "$STAGE/SHA256SUMS"); have=$(ls "$STAGE"/part_* 2>/dev/null | wc -l)
  log "$have of $want parts in $STAGE"
  [ "$have" -eq "$want" ]
}

unpack() {  # join, check, install the wheels, put weights and Fashion-MNIST in place
  (cd "$STAGE" && cat $(ls part_* | sort) > payload.tar && grep " payload.tar\$" SHA256SUMS | sha256sum -c --quiet -) \
    || { log "the joined payload's sha256 differs from SHA256SUMS: prepare and carry the parts again"; return 1; }
  rm -rf "$STAGE/payload" && mkdir -p "$STAGE/payload" && tar -C "$STAGE/payload" -xf "$STAGE/payload.tar" || return 1
  $GPU_PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
    "$STAGE"/payload/wheels/*.whl >>"$OUTDIR/setup.log" 2>&1 || { log "pip install failed (setup.log)"; return 1; }
  export PYTHONPATH="$STAGE/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PATH="$STAGE/site/bin:$PATH"
  export LAB_CACHE="$STAGE/cache" LAB_FASHION_DIR="$STAGE/payload/fashion"
  mkdir -p "$LAB_CACHE/weights" && cp "$STAGE"/payload/weights/* "$LAB_CACHE/weights/"
  $GPU_PY -m lab.commands.verify "$LAB_CACHE/weights" >>"$OUTDIR/setup.log" 2>&1 \
    || { log "the weights fail their manifests' sha256 (setup.log)"; return 1; }
  log "installed $(ls "$STAGE"/payload/wheels/*.whl | wc -l) wheels; weights verified: $(tail -n 1 "$OUTDIR/setup.log")"
}

step() {  # step NAME LOGFILE COMMAND...: run, time, record the exit status and the log's last line
  local name=$1 file=$2; shift 2
  local t0=$SECONDS
  "$@" >"$OUTDIR/$file" 2>&1
  local rc=$?
  log "$name: exit $rc in $((SECONDS - t0)) s; $(grep -E 'passed|failed|skipped|error' "$OUTDIR/$file" | tail -n 1)"
  [ $rc -eq 0 ] || FAILED="$FAILED $name"
}

case $MODE in
  prepare) prepare; exit ;;
  parts) print_parts; exit ;;
  receive) : >"$OUTDIR/summary.txt"; receive; exit 0 ;;
esac

: >"$OUTDIR/summary.txt"
FAILED=""
if [ $CPU -eq 1 ]; then
  PY=${PY:-.venv/bin/python}
  export LAB_DEVICE=cpu
  NB_TEST=tests/test_notebooks.py::test_notebook_runs_at_smoke_size MARK="not gpu"
  BENCH_ARGS="--sizes tiny --repeats 3 --warmup 1 --sample-steps 4"
  log "CPU mode: $PY, the user cache's weights"
else
  PY=$GPU_PY
  receive || { log "waiting for the other parts: carry them with --receive first (bash tests/gpu_check.sh --parts)"; exit 1; }
  unpack || exit 1
  NB_TEST=tests/test_gpu.py::test_notebook_runs_at_smoke_size_on_cuda MARK=gpu
  BENCH_ARGS=""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUTDIR/summary.txt" 2>&1
fi
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUTDIR/summary.txt"
K=""
if [ -n "$NOTEBOOKS" ]; then K=$(echo "$NOTEBOOKS" | sed 's/ \+/ or /g'); fi
PYTEST=($PY -m pytest -p no:cacheprovider -rs)  # -q comes from pyproject's addopts; a second would hide the counts
# the GPU tests but the notebooks (they are the next step, so that their time is its own)
step "pytest -m gpu" pytest_gpu.log "${PYTEST[@]}" -m gpu tests/test_gpu.py -k "not notebook_runs_at_smoke_size"
step "notebooks at smoke size" notebooks.log "${PYTEST[@]}" -m "$MARK" "$NB_TEST" ${K:+-k "$K"}
if [ $BENCH -eq 1 ]; then
  # shellcheck disable=SC2086
  step "bench" bench.log $PY -m lab.commands.bench $BENCH_ARGS
  tail -n 25 "$OUTDIR/bench.log" >>"$OUTDIR/summary.txt"
fi
if [ -n "$FAILED" ]; then log "FAILED:$FAILED (logs in $OUTDIR)"; exit 1; fi
log "all steps passed (logs in $OUTDIR)"
