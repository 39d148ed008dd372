"""Loaders behind one contract, built by name (installed as fastcifar.loaders)."""
