#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent (under 5 minutes on one GPU): the CUDA-marked tests,
# a short DPO run of the bundled model in bf16 on the GPU, packed-vs-padded log-probs on the
# GPU (in the CUDA tests), and the throughput benchmark. One summary line per check at the end;
# each check's full output is kept in $OUT (or a temp dir).
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
logs=${OUT:-$(mktemp -d)}
summary=()

check() {  # check NAME COMMAND...: run it, keep its output, add one summary line
  local name=$1; shift
  local began=$SECONDS status
  if timeout 240 "$@" >"$logs/$name.log" 2>&1; then status=PASS; else status="FAIL (exit $?)"; fi
  summary+=("$(printf '%-12s %-14s %4ss  %s' "$name" "$status" $((SECONDS - began)) "$(grep -v '^\s*$' "$logs/$name.log" | tail -n 1 | cut -c1-110)")")
}

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_check: torch sees no CUDA device here; nothing to check"; exit 2; }
python -c "import dpokit" 2>/dev/null || pip install -q --no-deps -e . || exit 2
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

check cuda-tests python -m pytest -q -rs -m cuda tests/test_cuda.py
check dpo-bf16 python -m dpokit dpo model=smollm2-135m-instruct data=examples/pairs.jsonl \
  max_steps=20 batch_size=8 eval_fraction=0.25 progress=false "output_dir=$logs/dpo-run" "cache_dir=$logs/cache"
check dpo-metrics python -c "import json,sys; r=[json.loads(l) for l in open('$logs/dpo-run/metrics.jsonl')]; \
t=[x for x in r if x['split']=='train']; print(f\"first loss {t[0]['loss']:.4f} (ln2 0.6931) last {t[-1]['loss']:.4f}, \
{sum(x['pairs_per_s'] for x in t[2:])/max(1,len(t)-2):.1f} pairs/s\"); sys.exit(0 if abs(t[0]['loss']-0.6931)<1e-3 else 1)"
check throughput python benchmarks/dpo_throughput.py --no-trl --steps 4 --warmup 2

echo
printf '%s\n' "${summary[@]}"
echo "logs: $logs"
