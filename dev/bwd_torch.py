"""dev/bwd_torch: PyTorch SDPA backward peer numbers for dev/bwd_bench (same shape, BNSD).
usage: .venv/bin/python dev/bwd_torch.py DTYPE B N S D [reps] [threads]
Prints wall median and GFLOP per CPU-second (process CPU time; load-independent)."""
import sys, time
import torch
import torch.nn.functional as F

dt = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[sys.argv[1]]
B, N, S, D = (int(x) for x in sys.argv[2:6])
reps = int(sys.argv[6]) if len(sys.argv) > 6 else 5
torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 2)
q, k, v = (torch.randn(B, N, S, D, dtype=dt, requires_grad=True) for _ in range(3))
dy = torch.randn(B, N, S, D, dtype=dt)
out = F.scaled_dot_product_attention(q, k, v)
flops = 2.5 * 4 * B * N * S * S * D
wall, cpu = [], []
for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    torch.autograd.grad(out, (q, k, v), dy, retain_graph=True)
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
wall.sort(); cpu.sort()
print(f"torch_sdpa_bwd {sys.argv[1]} threads {torch.get_num_threads()} median {wall[len(wall)//2]*1e3:.2f} ms "
      f"min {wall[0]*1e3:.2f} ms {flops/wall[len(wall)//2]/1e12:.3f} TFLOP/s  {flops/cpu[0]/1e9:.1f} GFLOP per cpu-s (min)")
