"""What a trained encoder gives: embedding metrics, latents of every row, the run report and
runs compared."""
