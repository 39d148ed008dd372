"""`fastcifar`: the command line. The only module that wires core, loaders and bench together.

Every command imports what it needs lazily, so `fastcifar --help` and `fastcifar data info` start fast and
work without the optional backends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console
from rich.table import Table
from rich_argparse import RichHelpFormatter

from fastcifar import __version__, cpu_memory
from fastcifar.data.cifar import DATASETS as DATASET_SPECS
from fastcifar.data.manifest import DALI_ENCODINGS, FORMATS
from fastcifar.errors import FastcifarError
from fastcifar.loaders import LOADERS

cpu_memory.configure()  # before torch allocates: big CPU blocks reused, in huge pages (see cpu_memory.py)
# Piped output (CI logs, `| tee`): rich would assume 80 columns and fold every table; logs are read wide.
if not sys.stdout.isatty():
    os.environ.setdefault("COLUMNS", "160")

console = Console()
DATASETS = tuple(DATASET_SPECS)  # the names, from fastcifar.data.cifar
ROOT_HELP = "data root (default: $FASTCIFAR_ROOT, else ~/.cache/fastcifar)"


# ---------------------------------------------------------------------------- data


def cmd_data_download(args: argparse.Namespace) -> None:
    from fastcifar.data.download import download

    path = download(args.dataset, _root(args))
    console.print(f"[green]{args.dataset}[/] is in {path}")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from fastcifar.data.synth import write_synthetic

    path = write_synthetic(args.dataset, _root(args), train=args.train, test=args.test, seed=args.seed)
    console.print(
        f"[yellow]SYNTHETIC[/] {args.dataset} stand-in ({args.train} train / {args.test} test images, "
        f"seed {args.seed}) written to {path}; it is for tests and offline demos, not for accuracy claims."
    )


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from fastcifar.data.prepare import prepare

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise FastcifarError(f"Unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)} "
                             "(e.g. --formats npy,ffcv).")
    if args.archive:
        from fastcifar.data.download import extract_user_archive

        console.print(f"extracted {args.archive} to {extract_user_archive(args.dataset, _root(args), args.archive)}")
    prepare(args.dataset, _root(args), formats=formats, dali_encoding=args.dali_encoding, custom=args.custom)


def cmd_data_verify(args: argparse.Namespace) -> None:
    from fastcifar.data.verify import verify

    rows = verify(args.dataset, _root(args))
    table = Table(title=f"prepared data in {_root(args)}: sha256 of every file against its manifest")
    for column in ("dataset", "format", "file", "bytes", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["dataset"], row["format"], row["file"], _cell(row["bytes"]), row["status"])
    console.print(table)
    console.print(f"[green]{len(rows)} file(s) verified[/]")


def cmd_data_info(args: argparse.Namespace) -> None:
    from fastcifar.data.info import describe

    rows = describe(_root(args))
    table = Table(title=f"fastcifar data in {_root(args)}")
    columns = list(rows[0]) if rows else ["dataset", "status"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _root(args: argparse.Namespace):
    from fastcifar.paths import data_root

    return data_root(args.root)


# ---------------------------------------------------------------------------- configs, train, eval, results


def cmd_configs(args: argparse.Namespace) -> None:
    from fastcifar.config import load_config, packaged_configs
    from fastcifar.engine.results import first_sentence

    table = Table(title="packaged configs (fastcifar train NAME)")
    table.add_column("name", no_wrap=True)
    for column in ("dataset", "model", "px", "epochs"):
        table.add_column(column)
    table.add_column("description (first sentence)", ratio=1)
    for name in sorted(packaged_configs()):
        cfg = load_config(name)
        table.add_row(
            name, cfg.data.dataset, cfg.model.name, str(cfg.augment.image_size), str(cfg.train.epochs),
            first_sentence(cfg.description),
        )
    console.print(table)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.set or [])
    for flag, key in (
        ("loader", "data.loader"), ("root", "data.root"), ("epochs", "train.epochs"), ("device", "train.device")
    ):
        value = getattr(args, flag)
        if value is not None:  # JSON is YAML: a path with '#' or ': ' stays one string
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_compile:
        overrides.append("train.compile=false")
    return overrides


def cmd_train(args: argparse.Namespace) -> None:
    from fastcifar.config import dump_config, load_config

    if args.resume:
        from fastcifar.engine.trainer import train

        if args.config or args.dump_config:
            raise FastcifarError(
                "--resume continues the run's saved config: drop the config name (and --dump-config); "
                "see the run's config.yaml."
            )
        train(None, resume=args.resume, overrides=_train_overrides(args))  # only where it runs may change
        return
    if not args.config:
        raise FastcifarError("Give a config name or YAML path (see `fastcifar configs`), or --resume RUN_DIR.")
    cfg = load_config(args.config, _train_overrides(args))
    if args.dump_config:
        console.print(dump_config(cfg), end="", markup=False, highlight=False)
        return
    from fastcifar.engine.trainer import train

    train(cfg)


def cmd_eval(args: argparse.Namespace) -> None:
    from fastcifar.engine.evaluate import evaluate

    evaluate(args.target, split=args.split, tta=args.tta, root=args.root)


def cmd_export(args: argparse.Namespace) -> None:
    from fastcifar.export import export_run

    export_run(args.target, args.out_dir, ema=args.ema, root=args.root, push=args.push, console=console)


def cmd_results(args: argparse.Namespace) -> None:
    from fastcifar.engine.results import print_results

    print_results(args.dirs or ["runs"])


def cmd_bench(args: argparse.Namespace) -> None:
    from fastcifar.bench.cli import run_bench

    run_bench(args)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastcifar",
        description="Train CIFAR-10/100 classifiers as fast as the device allows, and prove it with numbers.",
        formatter_class=RichHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastcifar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser(
        "data", help="download, synthesize, prepare and inspect datasets", formatter_class=RichHelpFormatter
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    download = data_commands.add_parser("download", help="download an official CIFAR archive (md5-checked)",
                                        formatter_class=RichHelpFormatter)
    synth = data_commands.add_parser("synth", help="write a small SYNTHETIC stand-in in the official pickle layout",
                                     formatter_class=RichHelpFormatter)
    prepare = data_commands.add_parser("prepare", help="write the npy / ffcv / dali formats the loaders read",
                                       formatter_class=RichHelpFormatter)
    info = data_commands.add_parser("info", help="what is downloaded and prepared under the root",
                                    formatter_class=RichHelpFormatter)
    verify = data_commands.add_parser("verify", help="recompute the sha256 of every prepared file; name damaged ones",
                                      formatter_class=RichHelpFormatter)
    for sub in (download, synth, prepare):
        sub.add_argument("dataset", choices=DATASETS)
    verify.add_argument("dataset", nargs="?", choices=DATASETS, help="default: every prepared dataset")
    for sub in (download, synth, prepare, info, verify):
        sub.add_argument("--root", help=ROOT_HELP)
    synth.add_argument("--train", type=int, default=5000, help="train images (default 5000)")
    synth.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    synth.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    prepare.add_argument("--dali-encoding", choices=DALI_ENCODINGS, default="raw",
                         help="image encoding inside the DALI shards")
    prepare.add_argument("--custom", action="store_true",
                         help="the folder is your own data in the CIFAR pickle layout: any number of images, the "
                              "classes of its meta file; runs on it are labelled custom")
    prepare.add_argument("--archive", metavar="TAR_GZ",
                         help="first extract the dataset folder from this .tar.gz into the root (never replacing a "
                              "folder that is there)")
    download.set_defaults(func=cmd_data_download)
    synth.set_defaults(func=cmd_data_synth)
    prepare.set_defaults(func=cmd_data_prepare)
    info.set_defaults(func=cmd_data_info)
    verify.set_defaults(func=cmd_data_verify)

    configs = commands.add_parser("configs", help="list the packaged configs", formatter_class=RichHelpFormatter)
    configs.set_defaults(func=cmd_configs)

    train = commands.add_parser("train", help="train a config (a packaged name or a YAML path)",
                                formatter_class=RichHelpFormatter)
    train.add_argument("config", nargs="?", help="packaged config name (see `fastcifar configs`) or YAML path")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field, e.g. --set optim.lr=0.01 (repeatable)")
    train.add_argument("--loader", choices=tuple(LOADERS), help="shortcut for --set data.loader=...")
    train.add_argument("--root", help=ROOT_HELP)
    train.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=...")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a run dir or checkpoint", formatter_class=RichHelpFormatter)
    evaluate.add_argument("target", help="run directory or checkpoint file")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--tta", action="store_true", help="average the image and its mirror")
    evaluate.add_argument("--root", help=ROOT_HELP)
    evaluate.set_defaults(func=cmd_eval)

    export = commands.add_parser(
        "export", help="write a run's weights in timm's format (model.safetensors + config.json)",
        formatter_class=RichHelpFormatter,
    )
    export.add_argument("target", help="run directory or checkpoint file")
    export.add_argument("out_dir",
                        help="folder to create; load it with timm.create_model('local-dir:OUT_DIR', pretrained=True)")
    export.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="EMA or raw weights (default: what eval used)")
    export.add_argument("--push", metavar="ORG/NAME", help="also upload the folder to this Hugging Face model repo")
    export.add_argument("--root", help=ROOT_HELP)
    export.set_defaults(func=cmd_export)

    results = commands.add_parser("results", help="seed-style table over run directories",
                                  formatter_class=RichHelpFormatter)
    results.add_argument("dirs", nargs="*", help="folders searched recursively for runs (default: runs)")
    results.set_defaults(func=cmd_results)

    bench = commands.add_parser("bench", help="loader / model / end-to-end throughput report",
                                formatter_class=RichHelpFormatter)
    _add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def _add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    try:
        from fastcifar.bench.cli import add_arguments
    except ImportError:  # the bench suite is installed with the package; this guards a broken install only
        return
    add_arguments(bench)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FastcifarError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    except RuntimeError as error:  # torch.OutOfMemoryError is one; anything else keeps its traceback
        if "out of memory" not in str(error):
            raise
        console.print("[bold red]error:[/] the device ran out of memory; lower data.batch_size "
                      "(or data.eval_batch_size, augment.image_size), e.g. --set data.batch_size=128.", highlight=False)
        return 2
    except OSError as error:  # unwritable --root, full disk, missing folder: the file system's own words
        where = f" '{error.filename}'" if error.filename else ""
        console.print(f"[bold red]error:[/] {error.strerror or error}{where}; "
                      f"choose a writable --root or free some space.", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
