"""Benchmarks of the engine against plain diffusers. Run each as ``python -m bench.NAME``.

See BENCHMARKS.md for what each script measures and the figures recorded so far.
"""
