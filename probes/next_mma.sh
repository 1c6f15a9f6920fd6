# Next session, first GPU call on branch int4-mma (nvidia-h100-x1, ~5 min): the tensor-core int4 GEMV's GPU
# tests (the PTX has only been compiled for sm_90 on a CPU), then its kernel rows at 1, 2, 4 and 8 rows next
# to main's packed-bf16 GEMV, the Triton dot path and tinygemm on the 7B shapes.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_int4_mma.py 2>&1 | tail -5
mkdir -p $OUT/mma
timeout 330 python scripts/bench_quant.py --schemes int4-g128 --kernel-rows 1,2,4,8 --parts kernels --out $OUT/mma 2>&1 \
  | grep -v Warn | grep "'us'\|rror\|Trace" | sed "s/'N'.*'path'/'path'/" | cut -c1-200
