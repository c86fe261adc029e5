#!/usr/bin/env bash
# dev/bwd_compare: same-run comparison for the backward (dev/bwd_03_superblock.md):
# peak probes (bench/peaks.py), then ROUNDS alternating rounds of
#   [base library (optional, BASE=build/dir with bwd_bench)] / build/bwd / PyTorch SDPA backward.
# usage: dev/bwd_compare.sh DTYPE(bf16|f32|f16) [ROUNDS] [B N S D]
set -e
cd "$(dirname "$0")/.."
dt=${1:-bf16}; rounds=${2:-3}; B=${3:-1}; N=${4:-16}; S=${5:-2048}; D=${6:-128}
kern=$([ "$dt" = bf16 ] && echo amx || echo avx512)
.venv/bin/python bench/peaks.py --reps 5 --threads 2 --probes amx_bf16,fp32_fma |
  python3 -c "import json,sys; d=json.load(sys.stdin)['probes']; print('peaks 2thr GFLOP/s:', {k: v['2'] for k, v in d.items()})"
for r in $(seq "$rounds"); do
  [ -n "$BASE" ] && echo -n "base: " && "$BASE"/bwd_bench "$dt" "$B" "$N" "$N" "$S" "$S" "$D" 0 5 "$kern" 2
  echo -n "new:  " && build/bwd/bwd_bench "$dt" "$B" "$N" "$N" "$S" "$S" "$D" 0 5 "$kern" 2
  .venv/bin/python dev/bwd_torch.py "$dt" "$B" "$N" "$S" "$D" 5 2
done
uptime
