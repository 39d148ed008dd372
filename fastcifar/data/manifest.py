"""The manifest of prepared data: ROOT/prepared/DATASET/manifest.json, the single record of what is complete.

A format counts as prepared only when the manifest lists it AND every file it lists is on disk with
the recorded size; folders without a manifest entry (a run killed before it finished) are never
trusted. `load_manifest` is what loaders call (a fast existence and size check, no hashing); it says
which command fixes what is missing or damaged. Each entry also records every file's sha256
(`checksums`), which `fastcifar data verify` recomputes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from fastcifar.atomic import write_bytes
from fastcifar.data.cifar import raw_present
from fastcifar.data.source import CUSTOM, CUSTOM_FLAG, source_of
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

FORMAT_VERSION = 1  # bump when the on-disk layout changes; older manifests are then rebuilt
MANIFEST = "manifest.json"
DALI_ENCODINGS = ("raw", "png", "jpeg")
FORMATS = ("npy", "ffcv", "dali")


def prepared_dir(dataset: str, root: str | os.PathLike | None) -> Path:
    """ROOT/prepared/DATASET (may not exist)."""
    return data_root(root) / "prepared" / dataset


def format_keys(formats: Iterable[str], dali_encoding: str | Iterable[str] = "raw") -> list[str]:
    """Normalise format names to keys: "npy", "ffcv", "dali:raw" | "dali:png" | "dali:jpeg".

    "dali" expands to one key per requested `dali_encoding`; "dali:png" names an encoding directly.
    """
    encodings = [dali_encoding] if isinstance(dali_encoding, str) else list(dali_encoding)
    keys: list[str] = []
    for name in formats:
        name = name.strip().lower()
        if name == "dali":
            new = [f"dali:{e}" for e in encodings]
        elif name.startswith("dali:") or name in ("npy", "ffcv"):
            new = [name]
        else:
            raise FastcifarError(f"Unknown data format '{name}'; choose from npy, ffcv, dali (or dali:png, dali:jpeg).")
        for key in new:
            if key.startswith("dali:") and key[5:] not in DALI_ENCODINGS:
                raise FastcifarError(f"Unknown DALI encoding '{key[5:]}'; choose from {', '.join(DALI_ENCODINGS)}.")
            if key not in keys:
                keys.append(key)
    return keys


def format_entry(manifest: dict, key: str) -> dict | None:
    """The manifest entry of a format key ("npy", "ffcv", "dali:png"), or None."""
    formats = manifest.get("formats", {})
    if key.startswith("dali:"):
        return formats.get("dali", {}).get(key[5:])
    return formats.get(key)


def set_format_entry(manifest: dict, key: str, entry: dict) -> None:
    formats = manifest.setdefault("formats", {})
    if key.startswith("dali:"):
        formats.setdefault("dali", {})[key[5:]] = entry
    else:
        formats[key] = entry


def entry_files(entry: dict) -> Iterator[str]:
    """Every relative file path listed under an entry's "train" and "test" parts."""
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for split in ("train", "test"):
        yield from walk(entry.get(split, {}).get("files", {}))


def is_complete(manifest: dict, key: str, base: Path) -> bool:
    """True when `key` is in the manifest and its files exist with the recorded sizes (bytes)."""
    entry = format_entry(manifest, key)
    return bool(entry) and not size_problems(entry, base)


def size_problems(entry: dict, base: Path) -> list[str]:
    """What is wrong with a format's files by existence and size alone (no hashing), one phrase per file:
    "'PATH' is missing" or "'PATH' is damaged (N of M bytes)". Entries from before per-file sizes were
    recorded are checked by their total size."""
    problems, total = [], 0
    sizes = {rel: c.get("bytes") for rel, c in entry.get("checksums", {}).items()}
    for rel in entry_files(entry):
        path = base / rel
        if not path.is_file():
            problems.append(f"'{path}' is missing")
            continue
        size = path.stat().st_size
        total += size
        if rel in sizes and size != sizes[rel]:
            problems.append(f"'{path}' is damaged ({size} of {sizes[rel]} bytes)")
    if not problems and total != entry.get("bytes"):
        problems.append(f"the files of '{base}' hold {total} of {entry.get('bytes')} bytes (damaged)")
    return problems


def read_manifest(base: Path) -> dict | None:
    """The stored manifest, or None when it is missing, unreadable or of another format_version."""
    try:
        manifest = json.loads((base / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


def write_manifest(base: Path, manifest: dict) -> None:
    """Write manifest.json atomically (temp file + rename)."""
    write_bytes(base / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def prepare_command(dataset: str, root: Path, keys: Iterable[str], manifest: dict | None = None) -> str:
    """The `fastcifar data prepare ...` command that builds the given format keys (with --custom when the
    `manifest` says the data is custom)."""
    keys = list(keys)
    names = sorted({k.split(":")[0] for k in keys}, key=FORMATS.index)
    command = f"fastcifar data prepare {dataset} --root {root} --formats {','.join(names)}"
    encodings = [k[5:] for k in keys if k.startswith("dali:")]
    if encodings and encodings != ["raw"]:
        command += f" --dali-encoding {encodings[0]}"
    if source_of(manifest) == CUSTOM:
        command += f" {CUSTOM_FLAG}"
    return command


def load_manifest(dataset: str, root: str | os.PathLike | None, require: Iterable[str] = ("npy",)) -> dict:
    """The manifest of prepared data, checked to contain the required formats.

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar).
        require: format keys that must be complete: "npy", "ffcv", "dali" (= "dali:raw"), "dali:png", "dali:jpeg".

    Returns:
        The manifest dict as stored, plus "dir": the prepared folder (str) that its relative paths start from.

    Raises:
        FastcifarError: the data is not prepared, or a required format is missing; the message gives the
            exact `fastcifar data prepare ...` command (or the download command when even the raw data is missing).
    """
    root = data_root(root)
    keys = format_keys(require)
    base = prepared_dir(dataset, root)
    manifest = read_manifest(base)
    if manifest is None:
        command = prepare_command(dataset, root, keys or ["npy"])
        if not raw_present(dataset, root):
            raise FastcifarError(
                f"No {dataset} data under '{root}'; run `fastcifar data download {dataset} --root {root}` (offline: "
                f"`fastcifar data synth {dataset} --root {root}`) and then `{command}`.")
        raise FastcifarError(f"{dataset} is not prepared in '{base}'; run `{command}`.")
    missing = [k for k in keys if not format_entry(manifest, k)]
    if missing:
        raise FastcifarError(f"{dataset} in '{base}' lacks the prepared format(s) {', '.join(missing)}; run "
                             f"`{prepare_command(dataset, root, missing, manifest)}`.")
    damaged = {k: size_problems(format_entry(manifest, k), base) for k in keys}
    damaged = {k: problems for k, problems in damaged.items() if problems}
    if damaged:
        problems = [p for ps in damaged.values() for p in ps]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FastcifarError(f"The prepared {', '.join(damaged)} format of {dataset}: {problems[0]}{more}; rebuild it "
                             f"with `{prepare_command(dataset, root, damaged, manifest)}`.")
    return {**manifest, "dir": str(base)}
