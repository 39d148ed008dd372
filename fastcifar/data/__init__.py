"""CIFAR data: safe reading of the official pickles, download, synthetic stand-ins, prepared formats.

Modules: cifar (read_split, DATASETS), pickles (restricted unpickler), download, synth (write_synthetic),
source (official | synthetic | custom), prepare (prepare), manifest (load_manifest, prepared_dir),
write_npy / write_ffcv / write_dali, space (sizes and write-failure sentences), verify (sha256 check),
info (describe).
"""

from fastcifar.data.cifar import DATASETS, CifarSplit, get_spec, read_split
from fastcifar.data.manifest import load_manifest, prepared_dir

__all__ = ["DATASETS", "CifarSplit", "get_spec", "read_split", "load_manifest", "prepared_dir"]
