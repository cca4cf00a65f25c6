"""Training: one configuration, one network, one fit. The typed config, datasets and the embedded
sample, the network and its geometry, fitting and evaluation, checkpoints, and device handling
(precision, CUDA checks, warm-up). Knows nothing of Optuna; this is the one layer (with the
trial runner) that imports torch."""
