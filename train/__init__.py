"""`python -m train` / `torchrun -m train`: the DDP trainer over kmervae_core (never imports ingest)."""
