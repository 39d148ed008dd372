"""Throughput benchmarks (installed as fastcifar.bench)."""
