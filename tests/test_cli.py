"""The `fastcifar` command: data commands end to end, errors as one sentence with exit status 2."""

import json
import subprocess
import sys

from fastcifar.cli import main


def test_synth_prepare_info_round_trip(tmp_path, capsys):
    root = str(tmp_path)
    assert main(["data", "synth", "cifar10", "--root", root, "--train", "100", "--test", "50"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main(["data", "prepare", "cifar10", "--root", root, "--formats", "npy,dali"]) == 0
    manifest = json.loads((tmp_path / "prepared" / "cifar10" / "manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["splits"]["train"]["count"] == 100
    capsys.readouterr()
    assert main(["data", "info", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "npy" in out


def test_unknown_format_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "prepare", "cifar10", "--root", str(tmp_path), "--formats", "npy,tfrecord"]) == 2
    assert "Unknown format(s) tfrecord" in " ".join(capsys.readouterr().out.split())


def test_prepare_without_data_names_the_fix(tmp_path, capsys):
    assert main(["data", "prepare", "cifar100", "--root", str(tmp_path)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "error:" in out and "fastcifar data" in out  # points at download / synth


def test_train_config_typo_exits_2_with_suggestion(capsys):
    assert main(["train", "resnet18_basline"]) == 2
    assert "did you mean 'resnet18_baseline'" in " ".join(capsys.readouterr().out.split())  # rich wraps lines


def test_train_dump_config_applies_shortcuts(capsys):
    shortcuts = ["--loader", "torch", "--epochs", "3", "--set", "optim.lr=0.01"]
    assert main(["train", "resnet18_baseline", *shortcuts, "--dump-config"]) == 0
    out = capsys.readouterr().out
    assert "loader: torch" in out and "epochs: 3" in out and "lr: 0.01" in out


def test_configs_lists_every_packaged_config(capsys):
    from fastcifar.config import packaged_configs

    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(name[:20] in out for name in packaged_configs())


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fastcifar", "train", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
