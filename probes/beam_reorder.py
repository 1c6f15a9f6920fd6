"""Same-run A/B of beam search's cache row gather at Llama-2-7B shapes (bf16 cache, one GPU): index_select
on 2-byte elements into new tensors (main's `reorder`) against this branch's 8-byte words into new
tensors (`reorder`) and into the other buffer (`reorder_into`, what a beam step now runs, here with every
position in use), next to a clone of the same bytes. Merge the branch if the words are faster at every
size; in generation a step moves only the positions in use, so it gains more than shown here.

    python probes/beam_reorder.py
"""

import torch

from llamafn import cache as kv
from llamafn.bench.ceilings import median_cuda_time
from llamafn.config import preset

cfg = preset("llama-2-7b")
print(torch.cuda.get_device_name())
for beams in (2, 4, 8):
    for context in (512, 4096):
        c = kv.init_cache(cfg, beams, context, dtype=torch.bfloat16, device="cuda")
        index = torch.arange(beams, device="cuda").flip(0)
        gb = 2 * sum(t.numel() * t.element_size() for t in kv.tensors(c)) / 1e9              # read + write
        spare = kv.zeros_like(c)
        times = {"elements": median_cuda_time(lambda: [t.index_select(0, index) for t in kv.tensors(c)], 20),
                 "words": median_cuda_time(lambda: kv.reorder(c, index), 20),
                 "into": median_cuda_time(lambda: kv.reorder_into(c, index, spare, context), 20),
                 "clone": median_cuda_time(lambda: [t.clone() for t in kv.tensors(c)], 20)}
        print({"beams": beams, "context": context, "GB_moved": round(gb, 2),
               **{f"{k}_ms": round(v * 1e3, 3) for k, v in times.items()},
               **{f"{k}_GBps": round(gb / v) for k, v in times.items()}}, flush=True)
