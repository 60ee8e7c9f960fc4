"""Running many: sweep files, executors (local processes, Ray) and reports."""
