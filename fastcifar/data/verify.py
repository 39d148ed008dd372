"""`fastcifar data verify`: recompute the sha256 of every prepared file and compare it with the manifest.

Loaders only check that each file exists with its recorded size (fast, at every train start); bit rot
with the right size passes that check, and this command is where it shows. A damaged format is struck
from the manifest, so no loader trains on it and `fastcifar data prepare` rebuilds it; the error names
every damaged file and the command that rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastcifar.data.cifar import DATASETS, get_spec
from fastcifar.data.files import locked, sha256_file
from fastcifar.data.manifest import (
    MANIFEST,
    format_entry,
    format_keys,
    prepare_command,
    prepared_dir,
    read_manifest,
    write_manifest,
)
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

ALL_KEYS = format_keys(("npy", "ffcv", "dali"), ("raw", "png", "jpeg"))
OK, NO_CHECKSUM = "ok", "no checksum recorded"


def verify(dataset: str | None, root: str | os.PathLike | None) -> list[dict]:
    """Check every prepared file of `dataset` (None: every prepared dataset) against its recorded sha256.

    Returns:
        One row per file: {"dataset", "format", "file" (relative to the prepared folder), "bytes", "status"},
        status "ok", "no checksum recorded" (prepared by an older fastcifar), "missing",
        "damaged (N of M bytes)" or "damaged (sha256 differs)".

    Raises:
        FastcifarError: nothing is prepared, or some file is missing or damaged (its format is then struck
            from the manifest); the message names the files and the `fastcifar data prepare` command.
    """
    root = data_root(root)
    if dataset:
        datasets = [get_spec(dataset).name]
    else:
        datasets = [d for d in DATASETS if (prepared_dir(d, root) / MANIFEST).exists()]
    if not datasets:
        raise FastcifarError(f"Nothing is prepared under '{root}'; run `fastcifar data prepare DATASET --root "
                             f"{root}` first.")
    rows, failures = [], []
    for name in datasets:
        base = prepared_dir(name, root)
        if not (base / MANIFEST).exists():
            raise FastcifarError(f"{name} is not prepared in '{base}'; run `fastcifar data prepare {name} --root "
                                 f"{root}`.")
        with locked(base):
            manifest = read_manifest(base)
            if manifest is None:
                raise FastcifarError(f"'{base / MANIFEST}' is unreadable or from another version; rebuild with "
                                     f"`fastcifar data prepare {name} --root {root}`.")
            damaged = []
            for key in ALL_KEYS:
                entry = format_entry(manifest, key)
                if not entry:
                    continue
                found = [{"dataset": name, "format": key, **row} for row in _check(entry, base)]
                rows += found
                bad = [r for r in found if r["status"] not in (OK, NO_CHECKSUM)]
                if bad:
                    damaged.append(key)
                    failures.append((name, key, bad, prepare_command(name, root, [key], manifest), base))
            if damaged:
                _strike(base, manifest, damaged)
    if failures:
        raise FastcifarError(_message(failures))
    return rows


def _check(entry: dict, base: Path) -> list[dict]:
    """Rows for the files of one format entry."""
    from fastcifar.data.manifest import entry_files

    checksums = entry.get("checksums", {})
    rows = []
    for rel in entry_files(entry):
        path, recorded = base / rel, checksums.get(rel)
        row = {"file": rel, "bytes": path.stat().st_size if path.is_file() else None}
        if row["bytes"] is None:
            row["status"] = "missing"
        elif recorded is None:
            row["status"] = NO_CHECKSUM
        elif row["bytes"] != recorded["bytes"]:
            row["status"] = f"damaged ({row['bytes']} of {recorded['bytes']} bytes)"
        elif sha256_file(path) != recorded["sha256"]:
            row["status"] = "damaged (sha256 differs)"
        else:
            row["status"] = OK
        rows.append(row)
    return rows


def _strike(base: Path, manifest: dict, keys: list[str]) -> None:
    """Remove damaged formats from the manifest (its files stay until `data prepare` replaces them)."""
    formats = manifest.get("formats", {})
    for key in keys:
        if key.startswith("dali:"):
            formats.get("dali", {}).pop(key[5:], None)
            if not formats.get("dali"):
                formats.pop("dali", None)
        else:
            formats.pop(key, None)
    write_manifest(base, manifest)


def _message(failures: list[tuple[str, str, list[dict], str, Path]]) -> str:
    """One sentence: every damaged file, then the commands that rebuild them."""
    files = [f"'{base / row['file']}' ({row['status']})" for _, _, bad, _, base in failures for row in bad]
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    commands = " and ".join(f"`{command}`" for _, _, _, command, _ in failures)
    keys = ", ".join(f"{name} {key}" for name, key, *_ in failures)
    return (f"Damaged prepared data: {shown}; the format(s) {keys} were struck from the manifest so no run trains "
            f"on them; rebuild with {commands}.")
