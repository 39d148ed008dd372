"""fastcifar: train CIFAR classifiers as fast as the device allows, and prove it with numbers."""

__version__ = "0.1.0"
