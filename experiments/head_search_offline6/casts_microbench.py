"""The two costs behind siren.pipeline.head._CastOnceLinear, side by side in one process, at the
offline-six best trial's first layer (width 1,600, 7,220 inputs, batches of 256 rows), bf16:

- the weight gradient: grad.t() @ x (what autograd's linear backward multiplies: a transposed
  view) against grad.t().contiguous() @ x (what _Bf16Linear multiplies), and whether the two give
  the same bits over 140 shapes of batch, width and inputs;
- the casts: into a new tensor every time (autocast) against into a tensor kept across steps.

    .venv/bin/python experiments/head_search_offline6/casts_microbench.py > experiments/head_search_offline6/casts_microbench.log
"""
import time

import torch


def ms(fn, n=20, rounds=3):
    """Best-of-rounds mean milliseconds per call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


torch.manual_seed(0)
g = torch.randn(256, 1600).bfloat16()      # the output gradient of the first Linear
x = torch.randn(256, 7220).bfloat16()      # its input
w32 = torch.randn(1600, 7220)
w16 = w32.bfloat16()
kept16, kept32 = torch.empty_like(w16), torch.empty_like(w32)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
for r in range(2):      # alternated, twice
    view = ms(lambda: torch.mm(g.t(), x))
    contig = ms(lambda: torch.mm(g.t().contiguous(), x))
    print(f"weight gradient (1600 x 256) @ (256 x 7220): transposed view {view:.2f} ms, contiguous copy "
          f"{contig:.2f} ms, ratio {view / contig:.2f}x")
for r in range(2):
    print(f"fp32 -> bf16 weight: new tensor {ms(lambda: w32.to(torch.bfloat16)):.2f} ms, kept tensor "
          f"{ms(lambda: kept16.copy_(w32)):.2f} ms; bf16 -> fp32 gradient: new tensor "
          f"{ms(lambda: w16.to(torch.float32)):.2f} ms, kept tensor {ms(lambda: kept32.copy_(w16)):.2f} ms")
same = total = 0
for b in (256, 187, 42, 1, 255):
    for w in (64, 256, 640, 1024, 1600, 2048, 448):
        for k in (7220, 48, 6518, 100):
            gg, xx = (torch.randn(b, w) * 3).bfloat16(), torch.randn(b, k).bfloat16()
            same += torch.equal(torch.mm(gg.t(), xx), torch.mm(gg.t().contiguous(), xx))
            total += 1
print(f"weight gradients bit-identical in {same} of {total} shapes")
