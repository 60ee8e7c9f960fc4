"""The checks of ``benchmarks/gpu.py`` (GPU validation, issue 18), one module each.

Each check runs in its own process (``python -m benchmarks.gpu_checks NAME --budget S --result FILE``),
sizes its work from its time budget, and rewrites its result file (JSON) after every figure, so that a
check that is killed at its budget still leaves what it measured.  The driver merges the files.
"""
CHECKS = ("env", "overhead", "online", "pretrained", "feature_cache", "sweep")
