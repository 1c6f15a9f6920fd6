# This session's GPU call on main: GPU tests of the changed kernels and the CLI; the beam gather A/B;
# the prefill attention table; bench verify with int4 weights (its beam rows time reorder_into).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/next
timeout 200 python -m pytest -q -p no:cacheprovider tests/kernels/test_gather_rows.py tests/test_cache.py \
  tests/decode/test_beam.py tests/test_cli.py tests/kernels/test_flash_attention.py -k "not stories260k" 2>&1 | tail -4
timeout 100 python probes/beam_reorder.py 2>&1 | grep -v Warn
timeout 200 python scripts/bench_kernels.py --parts prefill --out $OUT/next 2>&1 | grep -v Warn | tail -12
