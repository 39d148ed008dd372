"""fastcifar: package metadata. `loaders/` and `bench/` stay at the top of the repository and
install as `fastcifar.loaders` and `fastcifar.bench` through `package_dir`."""

from setuptools import setup

FFCV = ["ffcv==1.0.2", "assertpy", "terminaltables", "fastargs", "pytorch-pfn-extras"]
DALI = ["nvidia-dali-cuda130>=2,<3"]  # DALI 2.x (tested: 2.4.0); a new major version changes the graph API

setup(
    name="fastcifar",
    version="0.1.0",
    description="Train CIFAR-10/100 classifiers as fast as the device allows, and prove it with numbers.",
    python_requires=">=3.10",
    packages=["fastcifar", "fastcifar.data", "fastcifar.engine", "fastcifar.loaders", "fastcifar.bench"],
    package_dir={"fastcifar": "fastcifar", "fastcifar.loaders": "loaders", "fastcifar.bench": "bench"},
    package_data={"fastcifar": ["configs/*.yaml"], "fastcifar.bench": ["results/*"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        # model_args / data_config in save_for_hf and resolve_model_input_args (fastcifar export, img_size)
        "timm>=1.0.31",
        "huggingface_hub>=0.23",  # hf-hub: names, the offline error, export --push (timm needs it too)
        "safetensors>=0.4",  # weight files in and out
        "numba>=0.60",
        "numpy>=1.24",
        "rich>=13",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "rich-argparse>=1.4",
    ],
    extras_require={
        # ffcv 1.0.2 itself requires opencv-python (and the rest below): no second OpenCV wheel (-headless) beside it,
        # since both write the same cv2/ package and uninstalling one breaks the other.
        "ffcv": FFCV,
        "dali": DALI,  # CUDA 13 build (NVIDIA driver >= 580)
        "dali-cuda120": ["nvidia-dali-cuda120>=2,<3"],  # the CUDA 12 build, for older drivers (instead of [dali])
        "all": [*FFCV, *DALI, "tensorboard"],
        "tensorboard": ["tensorboard"],
        "dev": ["pytest>=8", "pytest-timeout", "ruff>=0.6,<1"],
    },
    entry_points={"console_scripts": ["fastcifar=fastcifar.cli:main"]},
)
