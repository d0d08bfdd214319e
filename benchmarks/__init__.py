"""gocontext's benchmarks, beside the peers a user would otherwise pick.

Run from the repository root: ``python -m benchmarks.bench [--quick]`` (or ``bash
benchmarks/run.sh``, which builds the benchmark's own environment with the peers first).
"""
