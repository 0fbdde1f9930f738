"""The store and everything that makes or checks it: the k-mer column map, the CLR, the .npy
reader, the store contract, ingest's conversion, verify, the synthetic sample. No torch here:
`python -m ingest` imports only this folder and the shared modules beside it."""
