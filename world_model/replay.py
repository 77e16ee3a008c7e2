"""Episodes on disk and fixed-length sequence sampling.

An episode is a dict of equally long arrays, stored as one ``.npz`` file (written to a temporary
name and renamed, so a crash never leaves half a file). Keys, per step t:

- the observation keys (vectors ``[T, D]`` float32, images ``[T, H, W, 3]`` uint8);
- ``action [T, A]``: the action taken after seeing obs t (zeros on the last step);
- ``reward [T]``: the reward received on arriving at obs t (0 on the first step);
- ``is_first``, ``is_last``, ``is_terminal [T]`` bool;
- anything else a producer adds (e.g. per-step success labels), carried along untouched.

Loading never unpickles (``allow_pickle=False``).
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .atomic import atomic_write_bytes, atomic_write_text
from .config import ModelSpec
from .errors import ReplayError

REQUIRED = ("action", "reward", "is_first", "is_last", "is_terminal")


def validate_episode(episode: dict[str, np.ndarray], source: str = "episode") -> int:
    missing = [k for k in REQUIRED if k not in episode]
    if missing:
        raise ReplayError(f"{source}: missing keys {missing}")
    scalars = sorted(k for k, v in episode.items() if np.ndim(v) == 0)
    if scalars:
        raise ReplayError(f"{source}: {scalars} hold a single value, not one per step")
    lengths = {k: len(v) for k, v in episode.items()}
    length = lengths["action"]
    wrong = {k: n for k, n in lengths.items() if n != length}
    if wrong:
        raise ReplayError(f"{source}: arrays of unequal length (action has {length}): {wrong}")
    if length == 0:
        raise ReplayError(f"{source}: empty episode")
    return length


def save_episode(directory: Path, episode: dict[str, np.ndarray]) -> Path:
    length = validate_episode(episode)
    directory = Path(directory)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-{length}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in episode.items()})
    atomic_write_bytes(directory / name, buf.getvalue())
    return directory / name


def load_episode(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile, numpy and OS errors for a truncated or garbage file
        raise ReplayError(
            f"cannot read episode {path} ({_one_line(e)}); the file is damaged: move it out "
            "of the folder"
        ) from e
    validate_episode(episode, str(path))
    return episode


SPEC_FILE = "spec.json"


def save_spec(directory: Path, spec: ModelSpec) -> None:
    """Records what the episodes in ``directory`` hold (observation sizes, action units)."""
    atomic_write_text(Path(directory) / SPEC_FILE, spec.model_dump_json(indent=2))


def load_spec(directory: Path) -> ModelSpec:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ReplayError(
            f"{directory} has no {SPEC_FILE} (the episodes' observation sizes and "
            "action units); folders written by `kiwi collect` have one"
        )
    try:
        return ModelSpec.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the file"
        raise ReplayError(
            f"{path} is not a valid episode spec ({e.error_count()} problem(s); "
            f"{where}: {first['msg']})"
        ) from e
    except (OSError, ValueError) as e:
        raise ReplayError(f"cannot read {path}: {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def episode_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob("*.npz") if not p.name.startswith("."))


class Replay:
    """Episodes in memory (and optionally on disk), sampled as ``[B, T, ...]`` sequences.

    Sequences lie within one episode; episodes shorter than the sequence length are kept but not
    sampled. With a directory, existing episodes are loaded on creation (so training resumes with
    its data) and new ones are written there.
    """

    def __init__(self, directory: Path | None = None, capacity_steps: int | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.capacity_steps = capacity_steps
        self.episodes: list[dict[str, np.ndarray]] = []
        self.paths: list[Path | None] = []
        if self.directory is not None and self.directory.is_dir():
            for path in episode_files(self.directory):
                self._append(load_episode(path), path)

    def __len__(self) -> int:
        return sum(len(e["action"]) for e in self.episodes)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def add(self, episode: dict[str, np.ndarray], save: bool = True) -> Path | None:
        validate_episode(episode)
        path = save_episode(self.directory, episode) if (save and self.directory) else None
        self._append(episode, path)
        return path

    def _append(self, episode: dict[str, np.ndarray], path: Path | None) -> None:
        self.episodes.append(episode)
        self.paths.append(path)
        while (
            self.capacity_steps is not None
            and len(self) > self.capacity_steps
            and len(self.episodes) > 1
        ):
            self.episodes.pop(0)
            self.paths.pop(0)

    def shard(self, rank: int, world: int) -> Replay:
        """Episodes rank, rank + world, rank + 2 world, ... (in memory, not saved again): one
        training process's share. Every rank gets at least one episode."""
        if self.num_episodes < world:
            raise ReplayError(
                f"{self.num_episodes} episodes cannot be shared among {world} training "
                "processes (each needs at least one)"
            )
        part = Replay(None)
        part.episodes, part.paths = self.episodes[rank::world], self.paths[rank::world]
        return part

    def sample(
        self, batch: int, length: int, rng: np.random.Generator, keys: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Uniform over all windows of ``length`` steps that lie inside an episode."""
        starts = np.array([max(0, len(e["action"]) - length + 1) for e in self.episodes])
        total = starts.sum()
        if total == 0:
            raise ReplayError(
                f"no episode has {length} steps yet ({self.num_episodes} episodes, "
                f"{len(self)} steps)"
            )
        flat = rng.integers(0, total, size=batch)
        ep_index = np.searchsorted(np.cumsum(starts), flat, side="right")
        offsets = flat - (np.cumsum(starts) - starts)[ep_index]
        keys = keys or tuple(self.episodes[0])
        return {
            k: np.stack([self.episodes[e][k][o : o + length] for e, o in zip(ep_index, offsets)])
            for k in keys
        }


def episode_from_steps(steps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks a list of per-step dicts into an episode."""
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}
