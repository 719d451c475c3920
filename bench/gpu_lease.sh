#!/usr/bin/env bash
# One lease of a CUDA machine that has PyTorch but no network (README "GPU check"): the `gpu` criteria preset with the
# correctness steps of `gpu-check` beside it (cuda tests, smoke pipeline), then gpu-check's timing steps alone, so the
# epoch timings are not shared with the preset's training. Run from the repository root, with the wheels in .whl/ and
# the shared data + checkpoints in shared/ (README "GPU check"). Results: bench/results/<date>-h200-gpu*.json/md and
# $OUT (default bench/results/lease): preset.log, a/ (correctness) and b/ (timing) gpu-check JSON + log, res.tgz (the
# runs' logs and manifests). PRESET_S caps the preset (a capped preset resumes where it stopped on the next call);
# TOTAL_S the whole script. Used on 2026-12-04 (bench/README "GPU: one H200 lease").
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
OUT=${OUT:-bench/results/lease}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site:$PWD
[ -e ../shared ] || ln -s "$PWD/shared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
python3 -c 'import torch,torch_pruning,onnxsim,onnxruntime;print(torch.__version__,torch.version.cuda,torch_pruning.__version__,onnxruntime.__version__)'
PRESET_S=${PRESET_S:-360}; TOTAL_S=${TOTAL_S:-575}
D=$(date +%Y-%m-%d)
echo "[$(el)s] gpu preset (cap ${PRESET_S}s)"
timeout -k 10 "$PRESET_S" python3 -m bench.criteria --preset gpu --out "bench/results/$D-h200-gpu.json" ${PRESET_ARGS:-} > "$OUT/preset.log" 2>&1 &
PP=$!
sleep 20
echo "[$(el)s] gpu-check correctness steps beside it"
echo "[$(el)s] correctness steps done: $(python3 -m bench.gpu_check --only cuda_tests smoke_pipeline --budget-s 280 --out-dir "$OUT/a" 2>&1 | tail -1)"
wait $PP; rc=$?; echo "[$(el)s] preset exit $rc (124: stopped at PRESET_S; rerun to resume)"; tail -15 "$OUT/preset.log"
LEFT=$(( TOTAL_S - $(el) - 15 ))
echo "[$(el)s] gpu-check timing steps, budget ${LEFT}s"
[ $LEFT -gt 40 ] && echo "[$(el)s] timing: $(python3 -m bench.gpu_check --only epoch_timings parallel compiled_timing --budget-s $LEFT --out-dir "$OUT/b" 2>&1 | tail -1)"
cp "bench/results/$D-h200-gpu.json" "$OUT/" 2>/dev/null
tar czf "$OUT/res.tgz" bench/results/"$D"-h200-gpu* $(find runs -name '*.log' -o -name manifest.json -o -name history.json -o -name report.json 2>/dev/null) 2>/dev/null
ls -la "$OUT" "$OUT/a" "$OUT/b"; echo "[$(el)s] end"
