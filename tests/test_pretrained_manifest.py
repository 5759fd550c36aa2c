"""The pretrained manifest, `verify` (presence, size, format, sha256, pins) and resumable `fetch`."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from safetensors.numpy import save_file

from nerffacespeech.pretrained import manifest, verify_for_stage
from nerffacespeech.pretrained.fetch import fetch
from nerffacespeech.pretrained.verify import Status, pin, read_pins, verify

REPO = Path(__file__).resolve().parents[1]
KNOWN_STAGES = {"preprocess", "stylenerf.train", "audio2nerf.train", "generate", "fid"}


def write_manifest(tmp_path: Path, files: dict) -> manifest.Manifest:
    import yaml

    path = tmp_path / "MANIFEST.yaml"
    path.write_text(yaml.safe_dump({"files": files}))
    return manifest.load(path)


def entry_fields(path: str, fmt: str = "any", **extra) -> dict:
    return {"path": path, "format": fmt, "stages": ["test"], "licence": "test data",
            "manual": f"copy {path} by hand", **extra}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the real manifest


def test_real_manifest_lists_every_file_the_issue_names():
    m = manifest.load()
    paths = {e.path.rsplit("/", 1)[-1] for e in m.entries}
    assert {"ffhq_1024.pkl", "SadTalker_V0.0.2_256.safetensors", "BFM09_model_info.mat",
            "s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar", "seg.pth", "LipaintNet.pt",
            "epoch_20.pth", "pt_inception-2015-12-05-6726825d.pth"} <= paths
    for e in m.entries:
        assert e.licence and e.manual and set(e.stages) <= KNOWN_STAGES, e.name


def test_malformed_manifest_names_the_entry_and_field(tmp_path):
    (tmp_path / "MANIFEST.yaml").write_text("files:\n  x:\n    path: a.bin\n    format: zip\n")
    with pytest.raises(manifest.ManifestError, match=r"files\.x\.stages"):
        manifest.load(tmp_path / "MANIFEST.yaml")


# ------------------------------------------------------------------ verify


def test_verify_accepts_a_good_file_with_a_known_digest(tmp_path):
    data = pickle.dumps({"w": list(range(100))})
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle", size=len(data), sha256=sha256(data))})
    (tmp_path / "net.pkl").write_bytes(data)
    [result] = verify(m, tmp_path)
    assert (result.status, result.checked_against, result.sha256) == (Status.OK, "manifest", sha256(data))


def test_verify_reports_missing_truncated_wrong_hash_and_bad_format(tmp_path):
    data = pickle.dumps(list(range(1000)))
    known = {"size": len(data), "sha256": sha256(data)}
    m = write_manifest(tmp_path, {
        "missing": entry_fields("missing.pkl", "pickle", **known),
        "truncated": entry_fields("truncated.pkl", "pickle", **known),
        "tampered": entry_fields("tampered.pkl", "pickle", **known),
        "html": entry_fields("html.pkl", "pickle"),
    })
    (tmp_path / "truncated.pkl").write_bytes(data[:-10])
    tampered = bytearray(data)
    tampered[-5] ^= 0xFF
    (tmp_path / "tampered.pkl").write_bytes(bytes(tampered))
    (tmp_path / "html.pkl").write_text("<!DOCTYPE html><html>Google Drive - virus scan warning</html>")
    statuses = {r.entry.name: r.status for r in verify(m, tmp_path)}
    assert statuses == {"missing": Status.MISSING, "truncated": Status.TRUNCATED,
                        "tampered": Status.WRONG_HASH, "html": Status.BAD_FORMAT}


def test_a_truncated_safetensors_file_fails_the_format_check_even_without_a_known_size(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    m = write_manifest(tmp_path, {"full": entry_fields("full.safetensors", "safetensors"),
                                  "cut": entry_fields("cut.safetensors", "safetensors")})
    statuses = {r.entry.name: r.status for r in verify(m, tmp_path)}
    assert statuses == {"full": Status.UNPINNED, "cut": Status.BAD_FORMAT}


def test_a_digest_prefix_from_the_file_name_is_checked(tmp_path):
    data = b"PK\x03\x04" + b"weights" * 50
    for name in ("good.pth", "bad.pth"):
        (tmp_path / name).write_bytes(data)
    m = write_manifest(tmp_path, {"good": entry_fields("good.pth", "torch", sha256_prefix=sha256(data)[:10]),
                                  "bad": entry_fields("bad.pth", "torch", sha256_prefix="0123456789")})
    statuses = {r.entry.name: (r.status, r.checked_against) for r in verify(m, tmp_path)}
    assert statuses == {"good": (Status.OK, "prefix"), "bad": (Status.WRONG_HASH, "prefix")}


def test_pin_records_the_digest_and_later_changes_are_caught(tmp_path):
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle")})
    target = tmp_path / "net.pkl"
    target.write_bytes(pickle.dumps(bytes(500)))
    [before] = verify(m, tmp_path)
    assert before.status is Status.UNPINNED
    assert pin([before], tmp_path) == ["net"]
    assert read_pins(tmp_path)["net"]["sha256"] == sha256(target.read_bytes())
    assert verify(m, tmp_path)[0].status is Status.OK
    target.write_bytes(pickle.dumps(b"\x01" * 500))     # same size, other bytes
    [after] = verify(m, tmp_path)
    assert (after.status, after.checked_against) == (Status.WRONG_HASH, "pin")


def test_an_unchanged_pinned_file_is_not_rehashed_unless_full(tmp_path):
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle")})
    target = tmp_path / "net.pkl"
    target.write_bytes(pickle.dumps(bytes(500)))
    pin(verify(m, tmp_path), tmp_path)
    stat = target.stat()
    target.write_bytes(pickle.dumps(b"\x01" * 500))      # same size ...
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the pinned mtime
    assert verify(m, tmp_path)[0].status is Status.OK            # trusted from the pin
    assert verify(m, tmp_path, full=True)[0].status is Status.WRONG_HASH


def test_pin_never_records_a_bad_file(tmp_path):
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle")})
    (tmp_path / "net.pkl").write_text("<html>quota exceeded</html>")
    assert pin(verify(m, tmp_path), tmp_path) == []
    assert not (tmp_path / "pins.json").exists()


# ------------------------------------------------------------------ verify_for_stage


def make_audio2nerf_files(root: Path) -> None:
    (root / "ffhq_1024.pkl").write_bytes(pickle.dumps({"G_ema": None}, protocol=4))
    save_file({"audio2exp.mapping1.bias": np.zeros(64, np.float32)}, str(root / "SadTalker_V0.0.2_256.safetensors"))
    scipy.io.savemat(root / "BFM09_model_info.mat", {"meanshape": np.zeros((1, 9))})


def test_verify_for_stage_is_empty_when_the_stage_has_its_files(tmp_path):
    make_audio2nerf_files(tmp_path)
    assert verify_for_stage("audio2nerf.train", tmp_path) == []


def test_verify_for_stage_names_each_missing_file(tmp_path):
    make_audio2nerf_files(tmp_path)
    (tmp_path / "SadTalker_V0.0.2_256.safetensors").unlink()
    [(field, message)] = verify_for_stage("audio2nerf.train", tmp_path)
    assert field == "pretrained.sadtalker_256"
    assert "missing" in message and "SadTalker_V0.0.2_256.safetensors" in message


def test_verify_for_stage_and_list_do_not_import_torch(tmp_path):
    make_audio2nerf_files(tmp_path)
    code = ("import sys; from nerffacespeech.pretrained import verify_for_stage, __main__ as cli;"
            f"assert verify_for_stage('audio2nerf.train', {str(tmp_path)!r}) == [];"
            "cli.main(['list']); assert 'torch' not in sys.modules, 'torch imported'")
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
    assert time.monotonic() - started < 10


def test_cli_verify_prints_a_table_and_fails_on_a_missing_file(tmp_path):
    make_audio2nerf_files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "nerffacespeech.pretrained", "--root", str(tmp_path), "verify",
                           "sadtalker_256", "s3fd", "--pin"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "unpinned" in lines["sadtalker_256"] and "missing" in lines["s3fd"]
    assert list(read_pins(tmp_path)) == ["sadtalker_256"]


# ------------------------------------------------------------------ fetch


class Served(http.server.BaseHTTPRequestHandler):
    """Serves `files`; honours Range; the first full response of a path in `drop_once` stops halfway."""

    files: dict[str, bytes] = {}
    drop_once: set[str] = set()
    ranges: list[str] = []
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.path in self.drop_once:
            self.drop_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (Served,), {"files": {}, "drop_once": set(), "ranges": [], "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_resumes_a_dropped_download_and_pins_the_file(tmp_path, server):
    handler, base = server
    data = pickle.dumps(np.arange(300_000, dtype=np.float32).tobytes(), protocol=4)
    handler.files["/net.pkl"] = data
    handler.drop_once.add("/net.pkl")
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle", size=len(data),
                                                      sources=[f"{base}/net.pkl"])})
    [result] = fetch(m, tmp_path, log=lambda line: None)
    assert result.status is Status.OK
    assert (tmp_path / "net.pkl").read_bytes() == data
    assert handler.ranges and handler.ranges[0] == f"bytes={len(data) // 2}-"
    assert read_pins(tmp_path)["net"]["sha256"] == sha256(data)
    assert not list(tmp_path.glob("*.part"))


def test_fetch_rejects_a_download_with_the_wrong_digest_and_places_nothing(tmp_path, server):
    handler, base = server
    handler.files["/net.pkl"] = pickle.dumps("not the weights")
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle", sha256="0" * 64,
                                                      sources=[f"{base}/net.pkl"])})
    lines = []
    [result] = fetch(m, tmp_path, log=lines.append)
    assert not result.good and not (tmp_path / "net.pkl").exists()
    assert any("wrong hash" in line for line in lines)


def test_fetch_extracts_a_member_of_a_zip_archive(tmp_path, server):
    handler, base = server
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"meanshape": np.ones((1, 3))})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("BFM_Fitting/BFM09_model_info.mat", buffer.getvalue())
        zf.writestr("BFM_Fitting/other.txt", "x")
    handler.files["/BFM_Fitting.zip"] = archive.getvalue()
    m = write_manifest(tmp_path, {"bfm": entry_fields("BFM09_model_info.mat", "mat", sources=[
        {"url": f"{base}/BFM_Fitting.zip", "archive_member": "BFM_Fitting/BFM09_model_info.mat"}])})
    [result] = fetch(m, tmp_path, log=lambda line: None)
    assert result.good
    assert (tmp_path / "BFM09_model_info.mat").read_bytes() == buffer.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BFM09_model_info.mat", "MANIFEST.yaml", "pins.json"]


def test_fetch_offline_fails_fast_with_the_manual_instructions(tmp_path):
    import socket

    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle", sources=[f"http://127.0.0.1:{port}/n"])})
    lines = []
    started = time.monotonic()
    [result] = fetch(m, tmp_path, connect_timeout=2, log=lines.append)
    assert time.monotonic() - started < 2
    assert result.status is Status.MISSING
    assert "offline" in lines[0] and any("copy net.pkl by hand" in line for line in lines)


def test_fetch_skips_files_that_already_verify(tmp_path, server):
    handler, base = server
    data = pickle.dumps("weights")
    (tmp_path / "net.pkl").write_bytes(data)
    m = write_manifest(tmp_path, {"net": entry_fields("net.pkl", "pickle", sha256=sha256(data),
                                                      sources=[f"{base}/net.pkl"])})
    [result] = fetch(m, tmp_path, log=lambda line: None)
    assert result.status is Status.OK and handler.requests == []
