"""Download and extract the official CIFAR archives: resumable, md5-checked, atomic.

Flow: an archive the user placed in ROOT with another md5 is renamed aside (NAME.md5-mismatch), never deleted;
ROOT/<archive>.part grows (an HTTP Range request resumes it) -> md5 check -> rename to
ROOT/<archive> -> extract into ROOT/.tmp-extract-XXXX (members with absolute paths, '..' or links
are refused) -> rename the dataset folder into place. A folder that is already there and complete
is left alone; a synthetic stand-in is replaced by the real data.
"""

from __future__ import annotations

import http.client
import os
import socket
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastcifar.data.cifar import SYNTHETIC_MARKER, get_spec, raw_dir, raw_present
from fastcifar.data.files import (
    STALE_TEMP_S,
    make_temp_dir,
    md5_file,
    remove_path,
    remove_stale_temps,
    replace_dir,
)
from fastcifar.data.progress import progress_task, say
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

CHUNK = 1 << 20  # bytes per read from the socket
TIMEOUT_S = 30.0  # per socket operation


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    filename: str


# Official sources (https://www.cs.toronto.edu/~kriz/cifar.html). Tests swap this table for a local server.
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz"),
}


def download(dataset: str, root: str | os.PathLike | None, progress: bool = True) -> Path:
    """Make sure the raw pickles of `dataset` are under ROOT, downloading them if needed.

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar); created if missing.
        progress: show a rich progress bar for the transfer.

    Returns:
        The raw folder (ROOT/cifar-10-batches-py or ROOT/cifar-100-python).

    Raises:
        FastcifarError: no network (names the folder to place the files in, and `fastcifar data synth`),
            an HTTP error, an md5 mismatch, or an unsafe or incomplete archive. An archive already in ROOT
            whose md5 is not the official one is never deleted: it is renamed to NAME.md5-mismatch.
    """
    spec, archive = get_spec(dataset), ARCHIVES[dataset]
    root = data_root(root)
    folder = raw_dir(dataset, root)
    if raw_present(dataset, root) and not (folder / SYNTHETIC_MARKER).exists():
        say(f"{spec.title} is already in {folder}", progress)
        return folder
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root, min_age_s=STALE_TEMP_S)  # unlocked root: spare a concurrent run's temps
    target = root / archive.filename
    aside = None
    if target.exists():
        digest = md5_file(target)
        if digest != archive.md5:  # the user's file (a mirror, a damaged copy, their own data): never deleted
            aside = set_aside(target)
            say(f"[yellow]{target} has md5 {digest}, not the official {archive.md5}; kept as {aside}, fetching the "
                f"official file[/]", progress)
    if not target.exists():
        part = root / (archive.filename + ".part")
        try:
            _fetch(archive, part, root, dataset, progress)
        except FastcifarError as exc:
            if aside is None:
                raise
            raise FastcifarError(_mismatch_message(dataset, root, archive, aside, digest, str(exc))) from None
        digest = md5_file(part)
        if digest != archive.md5:
            part.unlink()
            raise FastcifarError(f"Downloaded '{archive.filename}' has md5 {digest}, expected {archive.md5}; the file "
                                 f"was deleted, so run `fastcifar data download {dataset} --root {root}` again.")
        os.replace(part, target)
    extract(target, root, spec.folder)
    if not raw_present(dataset, root):
        raise FastcifarError(f"'{target}' extracted without all {spec.title} files; delete it and run "
                             f"`fastcifar data download {dataset} --root {root}` again.")
    return folder


MISMATCH_SUFFIX = ".md5-mismatch"  # a user's archive whose md5 is not the official one is renamed to NAME + this


def set_aside(path: Path) -> Path:
    """Rename `path` to PATH.md5-mismatch (PATH.md5-mismatch.1, ... when taken) and return the new name."""
    aside, number = path.with_name(path.name + MISMATCH_SUFFIX), 0
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}{MISMATCH_SUFFIX}.{number}")
    os.replace(path, aside)
    return aside


def _mismatch_message(dataset: str, root: Path, archive: Archive, aside: Path, digest: str, failure: str) -> str:
    """The offline error after a user's archive with the wrong md5 was set aside: what happened and both choices."""
    reason = failure.split(";")[0].rstrip(".")
    return (f"'{root / archive.filename}' has md5 {digest}, not the official {archive.md5}, so it was kept as "
            f"'{aside}' and not used, and fetching the official file failed ({reason}); either fetch the official "
            f"file (run `fastcifar data download {dataset} --root {root}` online, or place the official archive in "
            f"'{root}'), or use your file as it is with `fastcifar data prepare {dataset} --root {root} --custom "
            f"--archive {aside}` (runs on it are labelled custom).")


def extract_user_archive(dataset: str, root: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    """Extract a user's CIFAR-layout .tar.gz into ROOT (`data prepare --archive`), refusing to replace a folder.

    Returns:
        The raw folder it extracted.

    Raises:
        FastcifarError: the archive is missing, unsafe or lacks the dataset folder, or the folder exists already.
    """
    spec, root, path = get_spec(dataset), data_root(root), Path(path)
    folder = raw_dir(dataset, root)
    if not path.is_file():
        raise FastcifarError(f"Archive '{path}' does not exist; give the path of a .tar.gz holding '{spec.folder}'.")
    if folder.exists():
        raise FastcifarError(f"'{folder}' exists already and is not replaced by '{path}'; move the folder away to use "
                             f"the archive, or drop --archive to prepare the folder as it is.")
    root.mkdir(parents=True, exist_ok=True)
    return extract(path, root, spec.folder)


def _fetch(archive: Archive, part: Path, root: Path, dataset: str, progress: bool) -> None:
    """Stream `archive.url` into `part`, resuming from its current size with a Range request."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # range past the end: the .part already holds the whole file
            return
        raise FastcifarError(f"Downloading {archive.url} failed with HTTP {exc.code} {exc.reason}; "
                             f"{_offline_fix(archive, root, dataset)}.") from None
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, OSError) as exc:
        raise FastcifarError(f"Could not reach {archive.url} ({_reason(exc)}); "
                             f"{_offline_fix(archive, root, dataset)}.") from None
    with response:
        resumed = start and response.status == 206
        mode, done = ("ab", start) if resumed else ("wb", 0)  # a server ignoring Range sends it all again
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        try:
            with open(part, mode) as f, progress_task(archive.filename, total, progress, in_bytes=True) as bar:
                bar.update(completed=done)
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.advance(len(block))
                received = f.tell()
        except (TimeoutError, socket.timeout, ConnectionError, urllib.error.URLError, http.client.HTTPException) as exc:
            raise FastcifarError(f"The download of {archive.url} broke off ({_reason(exc)}); run the same command "
                                 f"again to resume from '{part}'.") from None
        if total is not None and received < total:  # the server closed early without an error: keep the part
            raise FastcifarError(f"The download of {archive.url} stopped at {received} of {total} bytes; run the same "
                                 f"command again to resume from '{part}'.")


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc or type(exc).__name__)


def _offline_fix(archive: Archive, root: Path, dataset: str) -> str:
    folder = get_spec(dataset).folder
    return (f"place '{archive.filename}' (or its extracted '{folder}' folder) in '{root}', or run "
            f"`fastcifar data synth {dataset} --root {root}` for an offline synthetic stand-in")


def extract(tar_path: Path, root: Path, folder: str) -> Path:
    """Extract `folder` from a .tar.gz into ROOT atomically (temp folder inside ROOT, then rename).

    Raises:
        FastcifarError: the archive is unreadable, has unsafe members, or lacks `folder`.
    """
    tmp = make_temp_dir(root, "extract")
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, tar_path)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kwargs)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise FastcifarError(f"'{tar_path}' is not a readable archive ({exc}); delete it and download "
                                 f"again.") from None
        if not (tmp / folder).is_dir():
            raise FastcifarError(f"'{tar_path}' has no '{folder}' folder; delete it and download the official archive.")
        replace_dir(tmp / folder, root / folder)
        return root / folder
    finally:
        remove_path(tmp)


def _check_member(member: tarfile.TarInfo, tar_path: Path) -> None:
    """Refuse members that could write outside the extraction folder or are not plain files/folders."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise FastcifarError(f"'{tar_path}' contains the unsafe path '{member.name}' and was not extracted; "
                             f"delete it and download the official archive.")
    if not (member.isfile() or member.isdir()):
        raise FastcifarError(f"'{tar_path}' contains the link or special file '{member.name}' and was not extracted; "
                             f"delete it and download the official archive.")
