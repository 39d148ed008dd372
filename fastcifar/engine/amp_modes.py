"""The values of `train.amp` and the autocast dtype each names, without importing torch (the config reads it).

fastcifar.engine.precision turns the names into torch dtypes; every list of AMP modes (config choices, the
bench's --amp) derives from AMP_MODES.
"""

# train.amp -> name of the torch autocast dtype (None = full float32, no autocast)
AMP_MODES: dict[str, str | None] = {"bf16": "bfloat16", "fp16": "float16", "none": None}
