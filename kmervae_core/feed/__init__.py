"""A rank's batches: the epoch plan (pure functions), the stream over whole chunks, the row
cache and the feed that chooses between them."""
