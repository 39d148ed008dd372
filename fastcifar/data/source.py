"""Where a dataset's images come from: the one `source` fact every report of a run carries.

official   the files of the official archive, byte for byte (md5 of every extracted file as published).
synthetic  a generated stand-in (`fastcifar data synth`): its accuracy says nothing about CIFAR.
custom     the user's own data in the CIFAR pickle layout, prepared with `fastcifar data prepare --custom`:
           any number of images and classes; its accuracy is not comparable with published CIFAR numbers.

Prepare decides it once and writes it into the manifest; the trainer, eval, `fastcifar results`, the bench
and `data info` read it from there (or from a summary.json) through `source_of` and show it with `label`.
"""

from __future__ import annotations

OFFICIAL, SYNTHETIC, CUSTOM = "official", "synthetic", "custom"
SOURCES = (OFFICIAL, SYNTHETIC, CUSTOM)
CUSTOM_FLAG = "--custom"  # the `data prepare` flag that accepts custom data

# md5 of every file the official archives extract to (as torchvision's CIFAR10/CIFAR100 datasets check them).
OFFICIAL_FILE_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "meta": "7973b15100ade9c7d40fb424638fde48",
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}

# How each source is shown in tables and banners: synthetic loudly, custom distinctly, official plainly.
LABELS = {OFFICIAL: "official", SYNTHETIC: "SYNTHETIC", CUSTOM: "custom"}
STYLED = {OFFICIAL: "official", SYNTHETIC: "[bold yellow]SYNTHETIC[/]", CUSTOM: "[bold cyan]custom[/]"}
BADGES = {SYNTHETIC: "[bold black on yellow] SYNTHETIC DATA [/]", CUSTOM: "[bold black on cyan] CUSTOM DATA [/]"}
WARNINGS = {
    SYNTHETIC: "this dataset is a generated stand-in: its accuracy says nothing about CIFAR.",
    CUSTOM: "this dataset is the user's own data in the CIFAR layout: its accuracy is not comparable with "
            "published CIFAR numbers.",
}


def source_of(record: dict | None) -> str | None:
    """The source of a manifest, summary.json or bench result's data block; None when unknown.

    Records written before `source` existed carry only a `synthetic` flag (and could not be custom).
    """
    if not record:
        return None
    source = record.get("source")
    if source in SOURCES:
        return source
    if "synthetic" in record and record["synthetic"] is not None:
        return SYNTHETIC if record["synthetic"] else OFFICIAL
    return None


def label(source: str | None, styled: bool = False) -> str:
    """'official', 'SYNTHETIC' or 'custom' ('-' when unknown); `styled` adds rich markup for tables."""
    if source not in SOURCES:
        return "-"
    return (STYLED if styled else LABELS)[source]


def badge(source: str | None) -> str:
    """A loud rich-markup badge for non-official data ("" for official or unknown)."""
    return BADGES.get(source, "")


def warning(source: str | None) -> str | None:
    """The banner line a run on non-official data prints (rich markup), or None for official data."""
    return f"{BADGES[source]} {WARNINGS[source]}" if source in WARNINGS else None
