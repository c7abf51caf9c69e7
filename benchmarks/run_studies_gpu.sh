#!/usr/bin/env bash
# Every study config at full size on one GPU, concurrently (small CNNs leave
# the GPU mostly idle, so the studies share it). Used for the README's
# per-chapter tables; each study's run directory lands in $OUT/NAME.
#   OUT=/tmp/studies ROBUSTLAB_DATA=.bench_data bash benchmarks/run_studies_gpu.sh [CONFIG ...]
set -u
OUT=${OUT:-runs/gpu-studies}
mkdir -p "$OUT"
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(configs/quickstart.yaml configs/ch[2-7]_*.yaml)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
for c in "${configs[@]}"; do
  name=$(basename "$c" .yaml)
  ( start=$(date +%s); python -m robustlab study "$c" --out "$OUT/$name" > "$OUT/$name.log" 2>&1;
    echo "$name exit $? in $(( $(date +%s) - start )) s" >> "$OUT/summary.txt" ) &
done
wait
cat "$OUT/summary.txt"
