"""Errors a user can cause (a missing checkpoint, a damaged episode file); no heavy imports, so
the CLI can catch them without loading torch."""


class CheckpointError(RuntimeError):
    pass


class ReplayError(RuntimeError):
    pass
