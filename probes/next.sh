# This session's GPU call on main: GPU tests of the changed kernels and the CLI; the decode attention
# table; the beam gather A/B.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/next
timeout 320 python -m pytest -q -x -p no:cacheprovider --durations=6 tests/kernels/test_gather_rows.py tests/test_cache.py \
  tests/decode/test_beam.py tests/kernels/test_flash_attention.py tests/test_cli.py -k "not stories260k" 2>&1 | tail -12
timeout 150 python scripts/bench_kernels.py --parts decode --out $OUT/next 2>&1 | grep -v Warn | grep "'triton'\|flash\|copy" | tail -14
timeout 80 python probes/beam_reorder.py 2>&1 | grep -v Warn
