"""DeepSpeed engines in bf16 train networks that contain BatchNorm (audio2nerf's audio encoder).

DeepSpeed 0.19 casts parameters to bf16 but leaves buffers fp32, and batch_norm refuses a bf16
weight with fp32 running statistics; the engine wrapper aligns them. One process, gloo, CPU.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import torch
from torch import nn
from launcher.runtime import distributed
from nerffacespeech.train.engine import EngineSpec, make_trainable

env = distributed.init("cpu")
def factory():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 1))
net = make_trainable("net", factory(), factory, EngineSpec("deepspeed", 2, "bf16", 1e-2, (0.0, 0.99), 1e-8, 4), env)
inputs = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
losses = []
for _ in range(5):
    loss = (net(inputs).float() - 1).square().mean()
    net.backward(loss)
    net.step()
    losses.append(loss.item())
norm = net.module[1]
print("RESULT", norm.running_mean.dtype, norm.weight.dtype, losses[-1] < losses[0])
distributed.shutdown()
"""


def test_a_batchnorm_network_takes_bf16_deepspeed_steps():
    # one process: its group lives in a HashStore, so no rendezvous port is opened
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    assert line.split()[1:] == ["torch.bfloat16", "torch.bfloat16", "True"]
