"""Errors a user can cause (a missing checkpoint, a damaged episode file, an output folder that
holds a previous run); no heavy imports, so the CLI can catch them without loading torch. The CLI
prints any ``KiwiError`` as one line."""


class KiwiError(RuntimeError):
    pass


class CheckpointError(KiwiError):
    pass


class ReplayError(KiwiError):
    pass


class OutputError(KiwiError):
    """An output folder that already holds a run (or --resume with none to continue)."""
