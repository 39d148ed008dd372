"""Write failures in `data prepare` end within seconds with one sentence naming the file and the space needed,
leave no temp files and no lock, and keep the formats already finished.

Made to happen for real: a size-limited tmpfs (mounted in a private mount namespace with `unshare`, skipped only
where mounting is not permitted), RLIMIT_FSIZE in a subprocess, a read-only file system, and an ffcv writer
worker killed by a signal. Before the guarded writer, each ffcv case hung forever (the test's timeout failed it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_data_custom import make_custom_folder

from fastcifar.data import write_ffcv as write_ffcv_module
from fastcifar.data.manifest import load_manifest, prepared_dir
from fastcifar.data.prepare import prepare
from fastcifar.errors import FastcifarError

TIME_BOUND_S = 30.0  # "within seconds" on a busy 2-core machine: reading the data included
HANG_S = 120  # a subprocess still running after this hangs (the bug this file guards against)
NPY = {"npy/train_images.npy", "npy/train_labels.npy", "npy/test_images.npy", "npy/test_labels.npy"}

# Runs `fastcifar data prepare` in a fresh process and prints what it left in the prepared folder.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
root, formats, fsize, fill = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
if fsize:
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # Python ignores SIGXFSZ: writes fail with EFBIG
if fill:  # the disk fills up while the format is written: the upfront space check sees enough room
    import fastcifar.data.prepare as prepare_module
    prepare_module.check_space = lambda *args: None
from fastcifar.cli import main
start = time.monotonic()
code = main(["data", "prepare", "cifar10", "--root", str(root), "--formats", formats, "--custom"])
elapsed = time.monotonic() - start
base = root / "prepared" / "cifar10"
files = {str(p.relative_to(base)): p.stat().st_size for p in base.rglob("*")} if base.exists() else {}
print("RESULT " + json.dumps({"code": code, "elapsed": elapsed, "files": files}))
"""


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """4,000 + 1,000 custom CIFAR-10-layout images (~15 MB as npy, ~50 MB as ffcv); copy before use."""
    root = tmp_path_factory.mktemp("raw")
    make_custom_folder(root)
    return root


def _root(raw_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(raw_root, root)
    (root / "prepared").mkdir()
    return root


def _mount_allowed() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = "mkdir -p /tmp/.fastcifar-probe && mount -t tmpfs -o size=1m tmpfs /tmp/.fastcifar-probe"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", probe], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not _mount_allowed(), reason="mounting a tmpfs (unshare -Urm) is not permitted here")


def _run(root: Path, formats: str, *, fsize: int = 0, fill: bool = False, tmpfs_mb: int | None = None,
         then_readonly: bool = False) -> tuple[dict, str]:
    """Run the CHILD prepare; with tmpfs_mb, inside a private mount namespace where ROOT/prepared is a tmpfs of
    that size (with then_readonly: npy is prepared first, then the tmpfs is remounted read-only).

    Returns:
        (the child's RESULT dict, its output with whitespace collapsed)."""
    child = [sys.executable, "-c", CHILD, str(root), formats, str(fsize), "1" if fill else "0"]
    command = child
    if tmpfs_mb is not None:
        steps = [f"mount -t tmpfs -o size={tmpfs_mb}m tmpfs {root / 'prepared'}"]
        if then_readonly:
            steps += [" ".join([*map(_quote, child[:3]), str(root), "npy", "0", "0"]) + " >/dev/null",
                      f"mount -o remount,ro {root / 'prepared'}"]
        steps.append(" ".join(map(_quote, child)))
        command = ["unshare", "-Urm", "sh", "-c", " && ".join(steps)]
    env = {**os.environ, "COLUMNS": "400"}  # one error line, unwrapped
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the session we started: the prepare and its writer processes
        process.communicate()
        pytest.fail(f"`data prepare --formats {formats}` still ran after {HANG_S} s: it hangs")
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out
    return json.loads(line[len("RESULT "):]), " ".join(out.split())


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _assert_clean(files: dict, formats: set[str]) -> None:
    """Only finished formats and the manifest remain: no temp file, no lock."""
    assert not [f for f in files if Path(f).name.startswith(".tmp-") or "/.tmp-" in f], files
    assert ".lock" not in files, files
    kept = {f.split("/")[0] for f in files if f != "manifest.json"}
    assert kept <= formats, files


@needs_mount
def test_disk_too_small_is_refused_before_writing(raw_root, tmp_path):
    """26 MB free: npy (15 MB) fits; ffcv (~50 MB) is refused at once, naming the folder and the space needed."""
    root = _root(raw_root, tmp_path)
    result, out = _run(root, "npy,ffcv", tmpfs_mb=26)
    assert result["code"] == 2 and result["elapsed"] < TIME_BOUND_S, out
    assert f"Not enough space for the ffcv format in '{root}/prepared/cifar10/ffcv': it needs about 5" in out
    assert "MiB are free; free some space (or choose another --root)" in out and "Traceback" not in out
    _assert_clean(result["files"], {"npy"})
    assert NPY <= set(result["files"]) and result["files"]["npy/train_images.npy"] == 4000 * 3072 + 128


@needs_mount
def test_disk_filling_up_during_the_ffcv_write(raw_root, tmp_path):
    """The ffcv worker hits ENOSPC mid-write (~22 MB left after npy; train.beton takes 25 MB): one sentence."""
    root = _root(raw_root, tmp_path)
    result, out = _run(root, "npy,ffcv", tmpfs_mb=36, fill=True)
    assert result["code"] == 2 and result["elapsed"] < TIME_BOUND_S, out
    assert (f"error: Writing '{root}/prepared/cifar10/ffcv/train.beton' for the ffcv format failed (No space left on "
            f"device); the format needs about 5") in out
    assert "are free; free some space" in out and "formats already prepared are kept" in out
    _assert_clean(result["files"], {"npy"})
    assert NPY <= set(result["files"])


@needs_mount
def test_read_only_file_system(raw_root, tmp_path):
    root = _root(raw_root, tmp_path)
    result, out = _run(root, "npy,dali", tmpfs_mb=64, then_readonly=True)
    assert result["code"] == 2 and result["elapsed"] < TIME_BOUND_S, out
    assert "Read-only file system" in out and "Traceback" not in out
    assert NPY <= set(result["files"]) and not any(f.startswith("dali") for f in result["files"])


def test_file_size_limit_in_the_ffcv_worker_and_the_dali_writer(raw_root, tmp_path):
    root = _root(raw_root, tmp_path)
    prepare("cifar10", root, formats=("npy",), progress=False, custom=True)
    base = prepared_dir("cifar10", root)
    before = {p: p.stat().st_mtime_ns for p in (base / "npy").iterdir()}
    limit = 4 << 20  # bytes; each ffcv page is 8 MiB, the first dali shard ~18 MB
    result, out = _run(root, "npy,ffcv", fsize=limit)
    assert result["code"] == 2 and result["elapsed"] < TIME_BOUND_S, out
    assert (f"Writing '{base}/ffcv/train.beton' for the ffcv format failed (File too large); a file outgrew this "
            f"process's file-size limit (`ulimit -f`)" in out) and "raise the limit" in out
    _assert_clean(result["files"], {"npy"})
    result, out = _run(root, "dali", fsize=limit)
    assert result["code"] == 2 and result["elapsed"] < TIME_BOUND_S, out
    assert f"Writing '{base}/dali/raw/train-0000.tar' for the dali:raw format failed (File too large)" in out
    _assert_clean(result["files"], {"npy"})
    assert {p: p.stat().st_mtime_ns for p in (base / "npy").iterdir()} == before  # finished format untouched
    load_manifest("cifar10", root, require=("npy",))


@pytest.mark.timeout(HANG_S)
def test_a_killed_ffcv_worker_ends_the_write(raw_root, tmp_path, monkeypatch):
    root = _root(raw_root, tmp_path)
    prepare("cifar10", root, formats=("npy",), progress=False, custom=True)
    freed = []
    free = write_ffcv_module._free_shared_memory

    def kill_at_100(self, i):  # runs in ffcv's forked worker: the OOM killer, say
        if i == 100:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, i)

    def record(name):
        freed.append(name)
        free(name)

    original = write_ffcv_module._Samples.__getitem__
    monkeypatch.setattr(write_ffcv_module._Samples, "__getitem__", kill_at_100)
    monkeypatch.setattr(write_ffcv_module, "_free_shared_memory", record)
    start = time.monotonic()
    with pytest.raises(FastcifarError, match=r"Writing '.*/prepared/cifar10/ffcv/train.beton' for the ffcv format "
                                             r"failed \(an ffcv writer worker \(pid \d+\) ended with signal "
                                             r"SIGKILL\)"):
        prepare("cifar10", root, formats=("npy", "ffcv"), progress=False, custom=True)
    assert time.monotonic() - start < TIME_BOUND_S
    base = prepared_dir("cifar10", root)
    assert not list(base.glob(".tmp-*")) and not (base / ".lock").exists() and not (base / "ffcv").exists()
    assert freed and not any(Path("/dev/shm", name.lstrip("/")).exists() for name in freed)  # ffcv's shared memory
    load_manifest("cifar10", root, require=("npy",))
