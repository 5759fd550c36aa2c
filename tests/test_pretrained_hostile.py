"""Hostile network pickles: the restricted reader bounds what a pickle may allocate by the file's
size, and `python -m nerffacespeech.pretrained verify` reads pickles with it, so a hostile
`ffhq_1024.pkl` fails verification instead of passing as "unpinned".

The hostile pickles are written opcode by opcode: each asks an allowed constructor (or an opcode)
for far more memory than the file holds, or calls a global that would run code. Where today's
reader would really allocate gigabytes, the load runs in a child process whose address space may
only grow by `HEADROOM`: a reader that tried to allocate would die of MemoryError there.
"""
from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nerffacespeech.pretrained import safe_pickle, stylenerf_pkl
from nerffacespeech.pretrained.safe_pickle import UnsafePickleError
from nerffacespeech.pretrained.verify import sha256_of
from tests.test_pretrained_stylenerf_pkl import G_KWARGS, official, snapshot_bytes  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
HEADROOM = 512 << 20

# ------------------------------------------------------------------ writing pickles by opcode


def op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_int(value: int) -> bytes:
    data = pickle.encode_long(value)
    return pickle.LONG1 + bytes([len(data)]) + data


def op_str(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def op_bytes(data: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def op_put(index: int) -> bytes:
    """Memoize the top of the stack and pop it: it stays reachable only through op_get."""
    return pickle.LONG_BINPUT + struct.pack("<I", index) + pickle.POP


def op_get(index: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", index)


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args): the callable, a MARK, the arguments, TUPLE, REDUCE."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def a_list(*items: bytes) -> bytes:
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS


def program(*ops: bytes, protocol: int = 4) -> bytes:
    return pickle.PROTO + bytes([protocol]) + b"".join(ops) + pickle.STOP


def legacy_storage(numel: int, data: bytes, storage_type: str = "FloatStorage") -> bytes:
    """What `Storage.__reduce__` embeds: torch's legacy torch.save of one storage (magic number,
    protocol, sys info, the storage as a persistent id with its numel, the key list, then the
    numel again and the raw data)."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    storage_id = (pickle.MARK + op_str("storage") + op_global("torch", storage_type) + op_str("0") + op_str("cpu")
                  + op_int(numel) + pickle.NONE + pickle.TUPLE + pickle.BINPERSID)
    return b"".join([pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                     pickle.dumps(sys_info, protocol=2), program(storage_id, protocol=2),
                     pickle.dumps(["0"], protocol=2), struct.pack("<q", numel), data])


def load_bytes(tmp_path: Path, data: bytes, name: str = "net.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    with open(path, "rb") as f:
        return safe_pickle.load(f)


CHILD = """
import resource, sys
if sys.argv[2] == "torch":
    import torch
from nerffacespeech.pretrained import safe_pickle
vm_kib = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0])
resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + int(sys.argv[3]), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open(sys.argv[1], "rb") as f:
        safe_pickle.load(f)
    outcome = "loaded"
except BaseException as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
print(outcome)
"""


def load_with_little_memory(path: Path, with_torch: bool = False) -> tuple[int, str]:
    """Load `path` in a child that may grow its address space by HEADROOM only: (peak RSS growth in KiB, outcome)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), "torch" if with_torch else "-", str(HEADROOM)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    grown, outcome = done.stdout.split("\n", 1)
    return int(grown), outcome.strip()


# ------------------------------------------------------------------ the allocation budget


def test_a_tiny_pickle_asking_bytearray_for_gigabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "ffhq_1024.pkl"
    path.write_bytes(program(call(op_global("builtins", "bytearray"), op_int(4 * GiB)), protocol=2))
    grown_kib, outcome = load_with_little_memory(path)
    assert outcome.startswith(f"UnsafePickleError: {path}: refused builtins.bytearray"), outcome
    assert f"{4 * GiB} bytes" in outcome
    assert grown_kib < 64 << 10


def test_an_opcode_length_beyond_the_end_of_the_file_is_never_allocated(tmp_path):
    path = tmp_path / "ffhq_1024.pkl"
    path.write_bytes(program(pickle.BYTEARRAY8 + struct.pack("<Q", 4 * GiB) + b"xx", protocol=5))
    grown_kib, outcome = load_with_little_memory(path)
    assert outcome.startswith(f"UnpicklingError: {path}: "), outcome
    assert "truncated" in outcome
    assert grown_kib < 64 << 10


def test_an_embedded_storage_declaring_more_than_it_holds_is_refused_before_torch_allocates(tmp_path):
    path = tmp_path / "ffhq_1024.pkl"
    path.write_bytes(program(call(op_global("torch.storage", "_load_from_bytes"), op_bytes(legacy_storage(GiB, b"")))))
    grown_kib, outcome = load_with_little_memory(path, with_torch=True)
    assert outcome.startswith(f"UnsafePickleError: {path}: refused an embedded storage"), outcome
    assert f"{4 * GiB} bytes" in outcome
    assert grown_kib < 64 << 10


def test_one_embedded_storage_loaded_again_and_again_exhausts_the_budget(tmp_path):
    """A 256 KiB storage may be built once per copy in the file, not 64 times from one copy."""
    storage = legacy_storage(1 << 16, bytes(1 << 18))
    data = program(op_global("torch.storage", "_load_from_bytes"), op_put(0), op_bytes(storage), op_put(1),
                   a_list(*[call(op_get(0), op_get(1))] * 64))
    with pytest.raises(UnsafePickleError, match=r"net\.pkl: refused torch\.storage\._load_from_bytes: .* budget"):
        load_bytes(tmp_path, data)


def test_copying_one_container_again_and_again_exhausts_the_budget(tmp_path):
    data = program(op_global("builtins", "tuple"), op_put(0), a_list(*[pickle.NONE] * 10_000), op_put(1),
                   a_list(*[call(op_get(0), op_get(1))] * 500))
    with pytest.raises(UnsafePickleError, match=r"net\.pkl: refused builtins\.tuple: .* budget"):
        load_bytes(tmp_path, data)


def test_scalar_constructors_refuse_containers_whose_text_could_be_exponential(tmp_path):
    """str() of a list holding itself twice, 16 levels deep, would be 2**16 copies of the leaf."""
    nested = [pickle.EMPTY_LIST + op_put(0)]
    nested += [pickle.MARK + op_get(0) + op_get(0) + pickle.LIST + op_put(0)] * 16
    data = program(*nested, call(op_global("builtins", "str"), op_get(0)))
    with pytest.raises(UnsafePickleError, match=r"net\.pkl: refused builtins\.str: .*list"):
        load_bytes(tmp_path, data)


def test_a_tensor_view_reaching_past_its_storage_is_refused(tmp_path):
    """torch would grow the 6-element storage to fit a 100-element view (or a 2**30-element one)."""
    storage = call(op_global("torch.storage", "_load_from_bytes"), op_bytes(legacy_storage(6, bytes(24))))
    view = call(op_global("torch._utils", "_rebuild_tensor_v2"), storage, op_int(0), op_int(100) + pickle.TUPLE1,
                op_int(1) + pickle.TUPLE1, pickle.NEWFALSE, call(op_global("collections", "OrderedDict")))
    with pytest.raises(UnsafePickleError, match=r"net\.pkl: refused torch\._utils\._rebuild_tensor_v2: .*6 elements"):
        load_bytes(tmp_path, program(view))


def test_large_and_empty_tensors_in_a_protocol_2_pickle_fit_the_budget(tmp_path):
    """Protocol 2 spells bytes as latin-1 text: each byte is built twice (bytes, then storage)."""
    tensors = {"a": torch.zeros(1 << 20), "b": torch.zeros(1 << 20), "empty": torch.zeros(0),
               "view": torch.ones(8)[2:5]}
    loaded = load_bytes(tmp_path, pickle.dumps(tensors, protocol=2))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


# ------------------------------------------------------------------ the network reader


def test_a_deeply_shared_structure_in_the_extras_is_converted_once_and_stays_shared(tmp_path):
    shared = [0]
    for _ in range(16):                                 # 2**16 paths to the leaf, 17 lists in the file
        shared = [shared, shared]
    data = pickle.dumps({"G_ema": torch.nn.Identity(), "training_set_kwargs": shared}, protocol=4)
    (tmp_path / "net.pkl").write_bytes(data)
    extras = stylenerf_pkl.read(tmp_path / "net.pkl").extras["training_set_kwargs"]
    assert extras[0] is extras[1]


def test_a_module_tree_whose_names_outgrow_the_file_is_refused(tmp_path):
    """state_dict() lists a shared submodule under every path: 16 doubly shared levels are 2**16 paths."""
    module = torch.nn.Linear(1, 1)
    for _ in range(16):
        parent = torch.nn.Module()
        parent.a = parent.b = module
        module = parent
    (tmp_path / "net.pkl").write_bytes(pickle.dumps({"G_ema": module}, protocol=4))
    with pytest.raises(stylenerf_pkl.NetworkPickleError, match=r"net\.pkl: G_ema: .*names"):
        stylenerf_pkl.read(tmp_path / "net.pkl")


# ------------------------------------------------------------------ verify


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def hostile_ffhq(case: str, marker: Path, networks) -> bytes:
    touch = f"open({str(marker)!r}, 'w').close()"
    if case == "os.system":
        return program(call(op_global("os", "system"), op_str(f"touch {marker}")))
    if case == "builtins.eval":
        return program(call(op_global("builtins", "eval"), op_str(touch)))
    G = networks.Generator(**G_KWARGS)                  # a __reduce__ payload deep inside a real network
    G.synthesis.layers[1]._buffers["resample_filter"] = Payload(exec, touch)
    return pickle.dumps({"G_ema": G}, protocol=4)


def run_verify(root: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m nerffacespeech.pretrained verify stylenerf_ffhq_1024`; exit 99 if it imported torch."""
    code = ("import sys; from nerffacespeech.pretrained import __main__ as cli\n"
            f"rc = cli.main(['--root', {str(root)!r}, 'verify', 'stylenerf_ffhq_1024', *{list(extra)!r}])\n"
            "sys.exit(99 if 'torch' in sys.modules else rc)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "exec nested in a network"])
def test_verify_fails_a_hostile_ffhq_pickle_naming_the_file_and_never_runs_its_payload(official, tmp_path, case):
    root, marker = tmp_path / "pretrained", tmp_path / "pwned"
    root.mkdir()
    data = hostile_ffhq(case, marker, official())
    (root / "ffhq_1024.pkl").write_bytes(data)
    done = run_verify(root, "--pin")
    assert done.returncode == 1, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("stylenerf_ffhq_1024")]
    assert "unsafe" in row and f"{root / 'ffhq_1024.pkl'}: refused" in row
    assert case.split()[0] in row
    assert not marker.exists() and not (root / "pins.json").exists()
    pickle.loads(data)                                  # control: what pickle.load would have done
    assert marker.exists()


def test_verify_fails_a_pickle_that_asks_for_more_memory_than_it_holds(tmp_path):
    (tmp_path / "ffhq_1024.pkl").write_bytes(program(call(op_global("builtins", "bytearray"), op_int(64 * GiB))))
    done = run_verify(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unsafe" in done.stdout and "bytearray" in done.stdout and "budget" in done.stdout


def test_verify_does_not_trust_a_pin_made_before_pickles_were_read(tmp_path):
    path = tmp_path / "ffhq_1024.pkl"
    path.write_bytes(program(call(op_global("os", "system"), op_str("true"))))
    stat = path.stat()
    old_pin = {"sha256": sha256_of(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (tmp_path / "pins.json").write_text(json.dumps({"version": 1, "files": {"stylenerf_ffhq_1024": old_pin}}))
    done = run_verify(tmp_path)
    assert done.returncode == 1 and "unsafe" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("protocol", [2, 4])
def test_an_honest_official_format_pickle_verifies_torch_free_and_pins(official, tmp_path, protocol):
    _, _, data = snapshot_bytes(official(), protocol)
    (tmp_path / "ffhq_1024.pkl").write_bytes(data)
    first = run_verify(tmp_path, "--pin")
    assert first.returncode == 0 and "unpinned" in first.stdout, first.stdout + first.stderr
    again = run_verify(tmp_path)
    assert again.returncode == 0 and " ok " in again.stdout, again.stdout + again.stderr
    assert stylenerf_pkl.read(tmp_path / "ffhq_1024.pkl").networks["G_ema"].init_kwargs == G_KWARGS
