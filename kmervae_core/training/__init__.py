"""The training loop and its parts: trainer, step runner and captured step, checkpoints,
best/plateau tracker, validator, recorder, the Prometheus exporter, process groups under torchrun."""
