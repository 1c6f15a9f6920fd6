"""Same-run A/B of beam search's cache row gather at Llama-2-7B shapes (bf16 cache, one GPU): one
index_select a tensor (elements, as `reorder` did before; 8-byte words into the other buffer, as the
previous `reorder_into` did) against the one-launch Triton gather of every layer (`reorder_into` now),
next to a clone of the same bytes. Positions in use: 64, 512 and 4096 of a 4096-position cache.

    python probes/beam_reorder.py
"""

import torch

from llamafn import cache as kv
from llamafn.bench.ceilings import median_cuda_time
from llamafn.config import preset

cfg = preset("llama-2-7b")
print(torch.cuda.get_device_name())
for beams in (2, 4, 8):
    c = kv.init_cache(cfg, beams, 4096, dtype=torch.bfloat16, device="cuda")
    spare = kv.zeros_like(c)
    index = torch.arange(beams, device="cuda").flip(0)
    for upto in (64, 512, 4096):
        gb = 2 * sum(t[:, :, :upto].numel() * t.element_size() for t in kv.tensors(c)) / 1e9    # read + write

        def loop():
            for s, d in zip(kv.tensors(c), kv.tensors(spare)):
                torch.index_select(kv.as_words(s[:, :, :upto]), 0, index, out=kv.as_words(d[:, :, :upto]))

        times = {"elements": median_cuda_time(lambda: [t[:, :, :upto].index_select(0, index) for t in kv.tensors(c)], 20),
                 "words_loop": median_cuda_time(loop, 20),
                 "kernel": median_cuda_time(lambda: kv.reorder_into(c, index, spare, upto), 20),
                 "clone": median_cuda_time(lambda: [t[:, :, :upto].clone() for t in kv.tensors(c)], 20)}
        print({"beams": beams, "positions": upto, "GB_moved": round(gb, 3),
               **{f"{k}_ms": round(v * 1e3, 3) for k, v in times.items()},
               **{f"{k}_GBps": round(gb / v) for k, v in times.items()}}, flush=True)
