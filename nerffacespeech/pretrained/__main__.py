"""python -m nerffacespeech.pretrained list|verify|fetch: see docs/PRETRAINED.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import manifest as manifest_mod
from .verify import format_table, pin, verify


def _list(manifest, root, args) -> int:
    rows = [("name", "path", "stages", "size", "sha256", "download")]
    for e in manifest.entries:
        digest = e.sha256[:16] if e.sha256 else (f"prefix {e.sha256_prefix}" if e.sha256_prefix else "pin on verify")
        rows.append((e.name, e.path, ",".join(e.stages), "" if e.size is None else str(e.size), digest,
                     "direct" if e.sources else "by hand"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"root: {root}")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _verify(manifest, root, args) -> int:
    results = verify(manifest, root, args.names or None, full=args.full)
    print(f"root: {root}")
    print(format_table(results))
    if args.pin:
        pinned = pin(results, root)
        print(f"pinned {len(pinned)} file(s) in {root / 'pins.json'}: {', '.join(pinned) or '-'}")
    return 0 if all(r.good for r in results) else 1


def _fetch(manifest, root, args) -> int:
    from .fetch import fetch

    results = fetch(manifest, root, args.names or None, connect_timeout=args.connect_timeout)
    print(format_table(results))
    return 0 if all(r.good for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nerffacespeech.pretrained", description=__doc__)
    parser.add_argument("--manifest", type=Path, default=manifest_mod.DEFAULT_MANIFEST)
    parser.add_argument("--root", type=Path, help=f"where the files lie (default: ${manifest_mod.ROOT_ENV} "
                        "or the manifest's folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="what the manifest expects, torch-free")
    check = commands.add_parser("verify", help="presence, size, format and sha256 of each file")
    check.add_argument("names", nargs="*")
    check.add_argument("--pin", action="store_true", help="record digests of good files in ROOT/pins.json")
    check.add_argument("--full", action="store_true", help="re-hash even files unchanged since pinned")
    get = commands.add_parser("fetch", help="download missing files (resumable), or print how to get them")
    get.add_argument("names", nargs="*")
    get.add_argument("--connect-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        manifest = manifest_mod.load(args.manifest)
        root = args.root or manifest_mod.default_root(manifest.path)
        return {"list": _list, "verify": _verify, "fetch": _fetch}[args.command](manifest, root, args)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
