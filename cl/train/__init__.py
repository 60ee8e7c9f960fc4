"""Training: the run lifecycle, the offline and online loops, CUDA graphs, checkpoints and loggers."""
