"""Download pretrained files where the machine has internet (a cluster's login node).

Downloads go to `<file>.part` and resume with HTTP Range requests after a dropped connection or
an interrupted run; the file is moved into place only after size, format and digest check out.
Offline, a short connect probe fails at once and the manual instructions are printed instead.
"""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from launcher import atomic

from .manifest import Entry, Manifest, Source
from .verify import Result, Status, pin, read_pins, verify_file

_CHUNK = 2**20
_ATTEMPTS = 5


class FetchError(RuntimeError):
    """A download failed, or what arrived is not the expected file."""


def reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the URL's host (or its configured proxy) opens within `timeout`."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    target = urlsplit(proxy) if proxy else parts
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download(url: str, part: Path, *, timeout: float, log: Callable[[str], None]) -> None:
    """Fetch `url` into `part`, resuming from what `part` already holds."""
    for attempt in range(1, _ATTEMPTS + 1):
        have = _size_of(part)
        request = urllib.request.Request(url, headers={"User-Agent": "nerffacespeech-fetch"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                start = have if response.status == 206 else 0
                if have and not start:
                    log(f"  the server ignored the range request: starting {part.name} again")
                length = response.headers.get("Content-Length")
                with open(part, "ab" if start else "wb") as out:
                    shutil.copyfileobj(response, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
            if length is not None and _size_of(part) < start + int(length):
                raise OSError("connection closed before the end of the file")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                return  # the part already holds everything the server has
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            log(f"  attempt {attempt}/{_ATTEMPTS} interrupted at {_size_of(part)} bytes: {exc!r}")
    raise FetchError(f"{url}: gave up after {_ATTEMPTS} attempts; re-run fetch to resume")


def _size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _extract(archive: Path, member: str, out: Path) -> None:
    """Copy `member` (or the one member with that file name) out of a zip archive."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        if member not in names:
            matches = [n for n in names if Path(n).name == Path(member).name]
            if len(matches) != 1:
                raise FetchError(f"{archive.name}: no unique member {member!r}")
            member = matches[0]
        with zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())


def fetch_entry(entry: Entry, root: Path, source: Source, *, timeout: float,
                log: Callable[[str], None]) -> Result:
    """Download one entry from one source; the file appears only once it verifies."""
    dest = entry.location(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive_name = Path(urlsplit(source.url).path).name
    part = dest.with_name(dest.name + ".part") if not source.archive_member \
        else dest.with_name(archive_name + ".part")
    log(f"{entry.name}: {source.url} -> {dest}")
    download(source.url, part, timeout=timeout, log=log)
    candidate = part
    if source.archive_member:
        candidate = dest.with_name(dest.name + ".extracted")
        _extract(part, source.archive_member, candidate)
    result = verify_file(entry, candidate, full=True)
    if not result.good:
        candidate.unlink()
        if candidate != part:
            part.unlink()
        raise FetchError(f"{entry.name}: downloaded file rejected: {result.status.value}: {result.detail}")
    os.replace(candidate, dest)
    atomic.fsync_dir(dest.parent)
    if candidate != part:
        part.unlink()
    return verify_file(entry, dest)


def manual_instructions(entry: Entry, root: Path) -> str:
    return f"{entry.name} -> {entry.location(root)}\n  " + entry.manual.replace("\n", "\n  ")


def fetch(manifest: Manifest, root: Path, names: list[str] | None = None, *,
          connect_timeout: float = 5.0, read_timeout: float = 60.0,
          log: Callable[[str], None] = print) -> list[Result]:
    """Fetch the named (default: all) entries that are not already good; pin what arrives."""
    root = Path(root)
    pins = read_pins(root)
    entries = [manifest.get(name) for name in names] if names else list(manifest.entries)
    results = {e.name: verify_file(e, e.location(root), pins.get(e.name)) for e in entries}
    todo = [e for e in entries if not results[e.name].good]
    offline = [e for e in todo if e.sources and not reachable(e.sources[0].url, connect_timeout)]
    if offline:
        log(f"no connection to {urlsplit(offline[0].sources[0].url).hostname} within {connect_timeout:g} s: "
            "this machine looks offline. Get these files by hand (docs/PRETRAINED.md):")
        for entry in todo:
            log(manual_instructions(entry, root))
        return list(results.values())
    for entry in todo:
        if not entry.sources:
            log(f"{entry.name}: no direct download; by hand:\n  {manual_instructions(entry, root)}")
            continue
        for source in entry.sources:
            try:
                results[entry.name] = fetch_entry(entry, root, source, timeout=read_timeout, log=log)
                break
            except FetchError as exc:
                log(f"  {exc}")
                results[entry.name] = Result(entry, Status.MISSING, entry.location(root), detail=str(exc))
    pin([r for r in results.values() if r.good and r.entry in todo], root)
    pins = read_pins(root)
    return [verify_file(e, e.location(root), pins.get(e.name)) for e in entries]
