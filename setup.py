"""fastcifar: package metadata. `loaders/` and `bench/` stay at the top of the repository and
install as `fastcifar.loaders` and `fastcifar.bench` through `package_dir`."""

from setuptools import setup

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
        "timm>=1.0",
        "numba>=0.60",
        "numpy>=1.24",
        "rich>=13",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "rich-argparse>=1.4",
    ],
    extras_require={
        "ffcv": ["ffcv==1.0.2", "opencv-python-headless", "assertpy", "terminaltables", "fastargs", "pytorch-pfn-extras"],
        "dali": ["nvidia-dali-cuda130"],
        "all": ["ffcv==1.0.2", "opencv-python-headless", "assertpy", "terminaltables", "fastargs", "pytorch-pfn-extras", "nvidia-dali-cuda130"],
        "tensorboard": ["tensorboard"],
        "dev": ["pytest>=8", "pytest-timeout"],
    },
    entry_points={"console_scripts": ["fastcifar=fastcifar.cli:main"]},
)
