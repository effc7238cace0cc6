"""Run-time services shared by every stage: strategy, precision, workdir, checkpoints, TensorBoard."""
