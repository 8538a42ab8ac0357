"""Benchmarks: what UM-ProtoShare costs over its same-backbone CNN (``run``), and GPU throughput (``gpu``)."""
