"""Throw-away labs for the demo and the benchmarks: the local lab, its databases, the demo."""
