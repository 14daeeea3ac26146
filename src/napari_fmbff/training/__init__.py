"""Training: the loop, the one train-and-save run, augmentation, DDP, metrics, evaluation, reports and plots."""
