"""Training engine: checkpoints, trainer loop, early stopping, run folder outputs."""
