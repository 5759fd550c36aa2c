"""Where a process sits in the job, read from torchrun's or Slurm's variables, the
TORCH_CUDA_ARCH_LIST repair DeepSpeed's op builder needs, and joining the process group once."""
import os
import socket
import subprocess
import sys
from pathlib import Path

from launcher.runtime.distributed import (
    Layout, first_host, prepare_deepspeed_environ, read_layout, sanitized_cuda_arch_list)

TORCHRUN_WORKER = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "node07", "MASTER_PORT": "29400", "GROUP_RANK": "1"}

SLURM_TASK = {"SLURM_PROCID": "6", "SLURM_LOCALID": "2", "SLURM_NTASKS": "8", "SLURM_NODEID": "1",
              "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}


def test_torchrun_variables_give_the_layout():
    assert read_layout(TORCHRUN_WORKER) == Layout(
        rank=5, local_rank=1, world_size=8, local_world_size=4, master_addr="node07",
        master_port=29400, source="torchrun")


def test_torchrun_wins_over_the_slurm_step_it_runs_in():
    assert read_layout({**SLURM_TASK, **TORCHRUN_WORKER}).source == "torchrun"


def test_slurm_variables_give_the_layout_with_the_first_node_as_master():
    layout = read_layout(SLURM_TASK)
    assert (layout.rank, layout.local_rank, layout.world_size, layout.local_world_size) == (6, 2, 8, 4)
    assert layout.master_addr == "gpu07" and layout.source == "slurm"


def test_slurm_master_port_is_derived_from_the_job_id_so_all_tasks_agree():
    other_task = {**SLURM_TASK, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    assert read_layout(SLURM_TASK).master_port == read_layout(other_task).master_port
    assert read_layout({**SLURM_TASK, "SLURM_JOB_ID": "4243"}).master_port != read_layout(SLURM_TASK).master_port


def test_slurm_respects_an_explicit_master_addr_and_port():
    layout = read_layout({**SLURM_TASK, "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "1234"})
    assert (layout.master_addr, layout.master_port) == ("10.0.0.9", 1234)


def test_slurm_uneven_tasks_per_node_give_this_nodes_count():
    environ = {**SLURM_TASK, "SLURM_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2", "SLURM_NTASKS": "10"}
    assert read_layout(environ).local_world_size == 2


def test_no_launcher_variables_mean_one_process():
    assert read_layout({"HOME": "/root"}) == Layout()
    assert read_layout({"SLURM_JOB_ID": "1"}).world_size == 1


def test_first_host_of_slurm_hostlists():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("login3,gpu[1-2]") == "login3"
    assert first_host("rack[2-3]-node[010-012]") == "rack2-node010"
    assert first_host("node5") == "node5"


def test_cuda_arch_list_loses_suffixes_deepspeed_cannot_parse():
    assert sanitized_cuda_arch_list("9.0a") == "9.0"
    assert sanitized_cuda_arch_list("8.0 8.6;9.0a;10.0f+PTX") == "8.0;8.6;9.0;10.0+PTX"
    assert sanitized_cuda_arch_list("9.0;9.0a") == "9.0"


def test_prepare_deepspeed_environ_rewrites_only_a_present_arch_list():
    environ = {"TORCH_CUDA_ARCH_LIST": "9.0a"}
    prepare_deepspeed_environ(environ)
    assert environ == {"TORCH_CUDA_ARCH_LIST": "9.0"}
    empty: dict = {}
    prepare_deepspeed_environ(empty)
    assert empty == {}


def test_deepspeed_op_builder_accepts_the_repaired_arch_list():
    """DeepSpeed's own parser (compute_capability_args) fails on 9.0a and accepts the repair."""
    probe = ("import os, deepspeed.ops.op_builder.builder as b\n"
             "from launcher.runtime.distributed import prepare_deepspeed_environ\n"
             "class Op(b.CUDAOpBuilder):\n"
             "    NAME = 'probe'\n"
             "    def absolute_name(self): return 'probe'\n"
             "    def sources(self): return []\n"
             "op = Op(name='probe')\n"
             "try:\n"
             "    op.compute_capability_args()\n"
             "    print('raw ok')\n"
             "except ValueError as error:\n"
             "    print('raw fails:', error)\n"
             "os.environ['TORCH_CUDA_ARCH_LIST'] = '9.0a'\n"
             "prepare_deepspeed_environ(os.environ)\n"
             "print(op.compute_capability_args())\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0a"})
    assert "raw fails: invalid literal for int() with base 10: '0a'" in result.stdout, result.stderr
    assert "compute_90" in result.stdout.splitlines()[-1]


JOIN_TWICE = """
import torch, torch.distributed as dist
from launcher.runtime import distributed
first = distributed.init("cpu")
second = distributed.init("cpu")
assert second.control_group is first.control_group is not None, "a second init made another group"
flag = torch.ones(1)
dist.all_reduce(flag, group=second.control_group)
distributed.shutdown()
print("sum", int(flag.item()))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_init_twice_joins_once_and_keeps_one_working_control_group():
    """Two ranks started as torchrun would start them (its variables), without its agent."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [subprocess.Popen([sys.executable, "-c", JOIN_TWICE], env={**base, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert all("sum 2" in output for output in outputs), outputs


SILENT_PEER = """
import os, sys, time, torch, torch.distributed as dist
from launcher.runtime import distributed
env = distributed.init("cpu")          # the timeout from NFS_COLLECTIVE_TIMEOUT_S
if env.rank == 1:
    time.sleep(120)                     # alive but never joins another collective
for name, group in (("control", env.control_group), ("world", None)):
    began = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1), group=group)
        print(name, "returned", flush=True)
    except RuntimeError as error:
        print(name, "timed out after", round(time.monotonic() - began, 1), type(error).__name__, flush=True)
os._exit(0)
"""


def test_a_collective_whose_peer_never_comes_errors_after_the_plans_timeout():
    """Both groups (the job's and its gloo control group) take the timeout the plan exports."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "NFS_COLLECTIVE_TIMEOUT_S": "3"}
    ranks = [subprocess.Popen([sys.executable, "-c", SILENT_PEER], env={**base, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        output = ranks[0].communicate(timeout=120)[0]
    finally:
        for rank in ranks:
            rank.kill()
            rank.communicate()
    waited = {line.split()[0]: float(line.split()[4]) for line in output.splitlines() if "timed out after" in line}
    assert set(waited) == {"control", "world"}, output
    assert all(2.5 <= seconds < 20 for seconds in waited.values()), output
