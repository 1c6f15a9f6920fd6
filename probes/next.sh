# Next session's first GPU call, on branch beam-reorder (nvidia-h100-x1, about 6 minutes, no carry):
#   the GPU tests of the int4 mma kernel (its one-axis grid, commit 538b343, has only run on the CPU) and of
#   beam search; the same-run A/B of the beam gather; bench verify with int4 weights (its beam rows now time
#   reorder_into). Merge beam-reorder if the tests pass and "into" beats "elements" at every size.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/next
timeout 240 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_int4_mma.py tests/quant/test_mma.py \
  tests/quant/test_decode_layout.py tests/decode/test_beam.py tests/test_cache.py tests/test_cli.py -k "not stories260k" 2>&1 | tail -3
timeout 120 python probes/beam_reorder.py 2>&1 | grep -v Warn
timeout 200 python scripts/bench_verify.py --weights int4-g128 --out $OUT/next 2>&1 | grep -v Warn | tail -13
