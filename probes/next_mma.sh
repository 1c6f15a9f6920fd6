# Next session's GPU calls on branch int4-mma (nvidia-h100-x1). The PTX has only been compiled for sm_90 on
# a CPU: run the tests first.
#   call 1 (~5 min): bash probes/next_mma.sh kernels  -- GPU tests, kernel rows at 1/2/4/8 rows (every chain
#                    count next to main's packed-bf16 GEMV, the Triton dot path and tinygemm)
#   call 2 (~8 min): bash probes/next_mma.sh decode   -- the compiled 7B int4 g128 step, group-plane GEMV
#                    against the mma layout, one machine
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/mma
if [ "$1" = kernels ]; then
  timeout 200 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_int4_mma.py tests/quant/test_mma.py 2>&1 | tail -5
  timeout 330 python scripts/bench_quant.py --schemes int4-g128 --kernel-rows 1,2,4,8 --parts kernels --out $OUT/mma 2>&1 \
    | grep -v Warn | grep "'us'\|rror\|Trace" | sed "s/'N'.*'path'/'path'/" | cut -c1-200
else
  timeout 560 python scripts/bench_quant.py --schemes int4-g128 --decode-schemes int4-g128+gemv,int4-g128+mma \
    --parts decode --batch-sizes 1 --attention triton --profile --new-tokens 100 --out $OUT/mma 2>&1 \
    | grep -v Warn | grep "tok_s\|rror\|Trace" | cut -c1-250
fi
