#!/usr/bin/env bash
# The CUDA path of transformer-mt, checked in one command on a machine with an NVIDIA GPU and no
# network, with the machine's own Python and torch (README.md, "Checking a GPU machine"):
#
#   scripts/gpu_check.sh [--cpu] [OUT_DIR]     # OUT_DIR: default $OUT, else runs/gpu_check
#
# Without a CUDA device that torch can see, it stops at once with one line and exit status 2.
# --cpu (or GPU_CHECK_DEVICE=cpu) rehearses the same stages on a CPU at tiny sizes (gloo for the
# ranks, the tiny model in the benchmarks, a few of the GPU tests' bodies), to check the plumbing
# where no GPU is at hand; tests/test_gpu_check.py runs it.
#
# Stages, each under `timeout`, each recorded and the next run even when one fails, all within
# GPU_CHECK_BUDGET_S (default 450 s, inside the 8 minutes the check may take); GPU_CHECK_STAGES
# names a subset to run (a rerun), GPU_CHECK_PYTEST_K a pytest -k expression for the tests:
#   setup         pip install --no-deps, offline: the wheels in .whl/ (`make gpu-wheels`: hydra-core,
#                 omegaconf, antlr4-python3-runtime, which such images lack), then the project itself
#   pytest        pytest -m gpu tests/test_gpu_*.py with TRANSFORMER_MT_TEST_DEVICE=cuda (no GPU: an error)
#   torchrun      torchrun --standalone: the quick start for 300 steps in bf16 (2 ranks, DDP over NCCL,
#                 where there are 2 GPUs; with one, a single rank, which needs no process group)
#   process_group one rank's NCCL process group bound to its GPU (device_id), as init_runtime makes it
#                 for several: all_reduce, broadcast_object_list, barrier, and a DDP step (device_ids)
#   bench_train_transformer_base, bench_train_transformer_big
#                 bench train, bf16, eager and compiled, against torch.nn.Transformer (the peer that
#                 runs in our own process; JoeyNMT, Eole and fairseq would pip install into venvs)
#   bench_decode  bench decode, greedy and beam 4, fp32 and bf16, ours only (the transformers and
#                 CTranslate2 peers need their own venvs, which cannot be installed offline)
#
# OUT_DIR gets at most 8 files (what the device tool brings back): gpu_check.log (everything, in
# order), environment.txt, pytest.xml, the bench JSON files and summary.json; the runs themselves go to
# a scratch folder (GPU_CHECK_WORK, default a new folder under /tmp). The last lines printed are one
# summary line per stage. Exit status 0 when every stage passed, 1 when one did not, 2 when the
# check could not start (no CUDA device, a bad argument).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT_DIR=
for arg in "$@"; do
    case $arg in
        --cpu) DEVICE=cpu ;;
        -h | --help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg (scripts/gpu_check.sh [--cpu] [OUT_DIR])" >&2; exit 2 ;;
        *) [ -z "$OUT_DIR" ] || { echo "gpu_check: one OUT_DIR only, not also $arg" >&2; exit 2; }
           OUT_DIR=$arg ;;
    esac
done
if [ "$DEVICE" != cuda ] && [ "$DEVICE" != cpu ]; then
    echo "gpu_check: GPU_CHECK_DEVICE=$DEVICE: use cuda (the default) or cpu (a rehearsal)" >&2
    exit 2
fi
OUT_DIR=${OUT_DIR:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
PYTHON=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
SITE=$WORK/site
LOG=$OUT_DIR/gpu_check.log
STAGES=$WORK/stages.tsv
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}:$REPO  # the installed copy first; the source tree if setup failed
export PATH=$SITE/bin:$PATH
export TRANSFORMER_MT_PEERS_DIR=$WORK/peers

if [ "$DEVICE" = cuda ]; then
    BUDGET_S=${GPU_CHECK_BUDGET_S:-450} CAP_SCALE=1 WORKERS=${GPU_CHECK_PYTEST_WORKERS:-6}
    PYTEST_K=${GPU_CHECK_PYTEST_K-}  # a pytest -k expression; empty: every GPU test
    STEPS=300 PRECISION=bf16 BENCH_MODELS="transformer_base transformer_big" COMPILE=true
    BENCH_SHAPE=(batch_size=256 src_len=64 tgt_len=64 warmup=3 steps=10)
    DECODE_SHAPE=(model=transformer_base "precisions=[fp32,bf16]")
else  # cpu
    # The GPU tests' bodies on a CPU take many minutes (two trainings of the sample model, compiles):
    # the rehearsal runs a few cheap ones unless GPU_CHECK_PYTEST_K selects others ('' for all).
    BUDGET_S=${GPU_CHECK_BUDGET_S:-900} CAP_SCALE=3 WORKERS=${GPU_CHECK_PYTEST_WORKERS:-1}
    PYTEST_K=${GPU_CHECK_PYTEST_K-cached_decoding or (kernel_equals_math_kernel and fp32)}
    STEPS=20 PRECISION=fp32 BENCH_MODELS="transformer_tiny" COMPILE=false
    BENCH_SHAPE=(batch_size=16 src_len=16 tgt_len=16 warmup=1 steps=2 vocab_size=1000)
    DECODE_SHAPE=(model=transformer_tiny "precisions=[fp32]" batch_size=8 src_len=8 out_len=8 repeats=1 vocab_size=1000)
fi
# GPU_CHECK_STAGES="pytest bench_decode": only these stages (and setup, which the others need), say to
# rerun what failed or ran out of time in a first run; the others are reported as not selected.
ONLY=${GPU_CHECK_STAGES:-}
START=$(date +%s)
mkdir -p "$WORK" || exit 1
: >"$LOG"
: >"$STAGES"

say() { echo "gpu_check: $*" | tee -a "$LOG"; }

# Ctrl-C or a TERM ends the running stage too: `timeout` runs it in a process group of its own and
# passes the signal on to that group.
RUNNING=
trap 'if [ -n "$RUNNING" ]; then pkill -TERM -P "$RUNNING"; fi; say "interrupted"; exit 130' INT TERM

# stage NAME CAP_S COMMAND...: run COMMAND under `timeout` (at most CAP_S, times CAP_SCALE on a CPU,
# and no longer than the budget left), its output into the log; record status, exit code and seconds.
stage() {
    local name=$1 cap=$(($2 * CAP_SCALE))
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    local limit=$((cap < left ? cap : left))
    if [ -n "$ONLY" ] && [ "$name" != setup ] && [[ " $ONLY " != *" $name "* ]]; then
        say "=== $name: not selected (GPU_CHECK_STAGES=$ONLY)"
        printf '%s\tnot_selected\t-\t0\t0\n' "$name" >>"$STAGES"
        return
    fi
    if ((limit < 10)); then
        say "=== $name: skipped, ${left} s left of the ${BUDGET_S} s budget"
        printf '%s\tskipped\t-\t0\t%s\n' "$name" "$limit" >>"$STAGES"
        return
    fi
    say "=== $name (timeout ${limit} s): $*"
    local began=$(date +%s) rc status
    # In the background, so that an interrupt reaches the trap below while the stage runs.
    (timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"; exit "${PIPESTATUS[0]}") &
    RUNNING=$!
    wait "$RUNNING"
    rc=$?
    RUNNING=
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    say "=== $name: $status (exit $rc) after $(($(date +%s) - began)) s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - began))" "$limit" >>"$STAGES"
}

# What the machine is: the GPU(s), the driver, Python, torch and the packages present.
{
    date -Is
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], sys.executable); print(f'torch {torch.__version__}, CUDA build {torch.version.cuda}, {torch.cuda.device_count()} CUDA device(s)', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
    "$PYTHON" -m pip list 2>/dev/null
} >"$OUT_DIR/environment.txt" 2>&1
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
TORCH_LINE=$(grep -m1 '^torch ' "$OUT_DIR/environment.txt" || echo "torch: not importable by $PYTHON")
if [ "$DEVICE" = cuda ] && [ "${GPUS:-0}" -lt 1 ]; then
    # One line, and no stage: every one of them would fail for this same reason.
    say "no CUDA device: $TORCH_LINE; nothing was run (on a CPU, scripts/gpu_check.sh --cpu rehearses the stages)" >&2
    if [ -z "${GPU_CHECK_WORK:-}" ]; then rm -rf "$WORK"; fi  # the empty scratch folder made above
    exit 2
fi
say "repository $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')), device $DEVICE, output $OUT_DIR, scratch $WORK"
say "$TORCH_LINE"

# a. the project and what the image lacks, offline (.whl/ from `make gpu-wheels`, carried along).
stage setup 90 bash -c '
    set -e
    wheels=()
    if compgen -G ".whl/*.whl" >/dev/null; then
        wheels=(.whl/*.whl)
        echo "installing ${wheels[*]#.whl/} and the project into $1"
    else
        echo "no .whl/ folder (make gpu-wheels makes it): the project alone, on the packages already installed"
    fi
    if compgen -G ".whl/build/*.whl" >/dev/null; then  # a setuptools that builds wheels by itself, for this build only
        "$0" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$2" .whl/build/*.whl
    fi
    # From a copy of the sources, so that the build leaves no build/ or egg-info in the checkout.
    mkdir -p "$3" && cp -r pyproject.toml README.md LICENSE MANIFEST.in transformer_mt "$3"
    PYTHONPATH=$2:$PYTHONPATH "$0" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$1" "${wheels[@]}" "$3"
    "$0" -c "import hydra, omegaconf, sentencepiece, sacrebleu, tensorboard, pytest, filelock; import transformer_mt.cli.train, transformer_mt.bench.train, transformer_mt.bench.decode; print(\"imports: ok (hydra-core\", hydra.__version__, \"omegaconf\", omegaconf.__version__ + \")\")"
    transformer-mt --help >/dev/null && echo "transformer-mt: $(command -v transformer-mt)"
' "$PYTHON" "$SITE" "$WORK/build-tools" "$WORK/source"
if command -v transformer-mt >/dev/null; then TMT=(transformer-mt); else TMT=("$PYTHON" -m transformer_mt); fi
if command -v torchrun >/dev/null; then TORCHRUN=(torchrun); else TORCHRUN=("$PYTHON" -m torch.distributed.run); fi

# b. the GPU tests (xdist spreads them over processes that share the GPU).
XDIST=()
if [ "$WORKERS" -gt 1 ] && "$PYTHON" -c "import xdist" 2>/dev/null; then XDIST=(-n "$WORKERS"); fi
SELECT=()
if [ -n "$PYTEST_K" ]; then SELECT=(-k "$PYTEST_K"); fi
stage pytest 170 env TRANSFORMER_MT_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -m gpu tests/test_gpu_*.py \
    "${SELECT[@]}" "${XDIST[@]}" -q -rs -p no:cacheprovider --durations=15 --basetemp="$WORK/pytest" --junitxml="$OUT_DIR/pytest.xml"

# c. training launched by torchrun: DDP over NCCL with 2 GPUs (gloo on the CPU rehearsal).
RANKS=1
if [ "$DEVICE" = cpu ] || [ "${GPUS:-0}" -ge 2 ]; then RANKS=2; fi
stage torchrun 75 "${TORCHRUN[@]}" --standalone --nproc_per_node=$RANKS -m transformer_mt train \
    trainer.device="$DEVICE" trainer.precision=$PRECISION trainer.max_steps=$STEPS trainer.log_every=50 \
    trainer.valid_every=$STEPS trainer.save_every=$STEPS output_dir="$WORK/torchrun"
if [ -f "$WORK/torchrun/train.log" ]; then sed 's/^/  train.log: /' "$WORK/torchrun/train.log" | grep -v ' step [0-9]* |' >>"$LOG"; fi
stage process_group 40 "${TORCHRUN[@]}" --standalone --nproc_per_node=1 scripts/gpu_check.py probe --device "$DEVICE"

# d. the speed harnesses, writing their JSON next to the log (one run per model: a model that runs
# out of time leaves the others' results).
for model in $BENCH_MODELS; do
    stage "bench_train_$model" 150 "${TMT[@]}" bench train "models=[$model]" "precisions=[$PRECISION]" \
        compile=$COMPILE "peers=[torch]" device="$DEVICE" "${BENCH_SHAPE[@]}" \
        output="$OUT_DIR/bench_train_$model.json"
done
stage bench_decode 60 "${TMT[@]}" bench decode device="$DEVICE" "beams=[1,4]" "peers=[]" "${DECODE_SHAPE[@]}" \
    output="$OUT_DIR/bench_decode.json"

# The summary: one line per stage, and summary.json.
"$PYTHON" scripts/gpu_check.py summary --stages "$STAGES" --out "$OUT_DIR" --run "$WORK/torchrun" --log "$LOG" \
    --budget "$BUDGET_S" --seconds "$(($(date +%s) - START))" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
exit "$status"
