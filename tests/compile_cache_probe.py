"""A fresh process that compiles one small training step with the run's compile cache in the
folder given as argv[1], then prints inductor's and AOTAutograd's cache counters as JSON."""
import json
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from launcher.runtime import compile_cache

compile_cache.use_run_cache(Path(sys.argv[1]), torch.device("cpu"), {"width": 8})
net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
torch.compile(net, dynamic=False)(torch.randn(4, 8)).sum().backward()
print(json.dumps({"inductor": dict(counters["inductor"]), "aot_autograd": dict(counters["aot_autograd"])}))
