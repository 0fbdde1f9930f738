"""`python -m ingest IN.npy OUT.zarr`: the command-line front of kmervae_core.store.convert (no torch)."""
