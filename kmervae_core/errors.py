"""Errors whose message is one complete line for the user: CLIs print it and exit 2."""


class KmervaeError(Exception):
    """Bad input or a bad store: the message names the problem in one line."""


class InputError(KmervaeError):
    """The source .npy (or another user-supplied file) cannot be used."""


class StoreError(KmervaeError):
    """A Zarr store is missing, incomplete, foreign, or does not match what was asked."""


class DamagedChunk(StoreError):
    """A chunk that is missing or cannot be decoded (checksum, truncation). A DataLoader
    re-raises a worker's error as the same type around the worker's traceback, whose last line
    is this one: only that line is kept, so the user still reads one line."""

    def __init__(self, message: str) -> None:
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(last.removeprefix(f"{DamagedChunk.__module__}.{DamagedChunk.__qualname__}: "))


class LoaderWorkerDied(KmervaeError):
    """A DataLoader worker was killed (the OOM killer, a signal): the run stops, checkpoints kept."""
