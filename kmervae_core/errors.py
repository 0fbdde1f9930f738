"""Errors whose message is one complete line for the user: CLIs print it and exit 2."""


class KmervaeError(Exception):
    """Bad input or a bad store: the message names the problem in one line."""


class InputError(KmervaeError):
    """The source .npy (or another user-supplied file) cannot be used."""


class StoreError(KmervaeError):
    """A Zarr store is missing, incomplete, foreign, or does not match what was asked."""


class DamagedChunk(StoreError):
    """A chunk that is missing or cannot be decoded (checksum, truncation)."""


class ReaderFailed(KmervaeError):
    """A feed reader thread's read failed other than on a damaged chunk (out of memory, an
    unexpected error) or hung: the run stops with one line (exit 4), checkpoints kept."""
