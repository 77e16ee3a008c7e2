"""Job configs: YAML files under configs/, validated by frozen pydantic models.

A file may hold a ``presets:`` map of named overlays (``--quick`` applies ``presets.quick``);
``--set a.b=value`` overrides one key (the value is parsed as YAML). Any unknown or invalid key is
a ConfigError naming the file and the dotted key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from world_model.config import AgentConfig, BehaviorConfig, ModelConfig, TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    pass


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvConfig(Frozen):
    id: str = "Pendulum-v1"
    obs_key: str = Field("state", description="name under which a vector observation is stored")
    dim_names: tuple[str, ...] = Field((), description="names of the observation's dimensions")


class DataConfig(Frozen):
    episodes: str | None = Field(None, description="folder of recorded episodes; None: collect")
    random_steps: int = Field(5000, gt=0, description="random-policy steps collected for training")
    holdout_episodes: int = Field(5, ge=1, description="episodes collected for evaluation only")
    seed: int = 0


class LabConfig(Frozen):
    context: int = Field(16, gt=0, description="posterior steps before imagining")
    horizon: int = Field(50, gt=0, description="open-loop steps evaluated")
    samples: int = Field(8, gt=0, description="imagined samples averaged per prediction")
    report_horizons: tuple[int, ...] = (1, 5, 15)


class PendulumJob(Frozen):
    """configs/pendulum.yaml: the RSSM lab and the Dreamer agent on gymnasium's Pendulum-v1."""

    task: Literal["pendulum"] = "pendulum"
    env: EnvConfig = EnvConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    behavior: BehaviorConfig = BehaviorConfig()
    agent: AgentConfig = AgentConfig()
    lab: LabConfig = LabConfig()


class GraspDataConfig(Frozen):
    episodes: str = Field("data/grasp", description="folder of `kiwi collect` episodes")
    holdout: str | None = Field(None, description="folder of held-out episodes for evaluation")


class LinkConfig(Frozen):
    """ZeroMQ addresses. Loopback by default; any other address needs the CURVE keys."""

    obs: str = "tcp://127.0.0.1:5601"  # slow process -> runtime (runtime binds PULL)
    query: str = "tcp://127.0.0.1:5602"  # runtime REP: status, clock, grasp queries
    telemetry: str = "tcp://127.0.0.1:5603"  # runtime PUB
    camera: str = "tcp://127.0.0.1:5604"  # sim world PUB: frames + joint state at capture
    command: str = "tcp://127.0.0.1:5605"  # sim world PULL: joint targets from the runtime
    sim_state: str = "tcp://127.0.0.1:5606"  # sim world PUB: joints every step (+ ground truth)
    curve_secret: str | None = Field(None, description="server .key_secret (non-loopback binds)")
    curve_clients: str | None = Field(None, description="folder of accepted client .key files")

    @model_validator(mode="after")
    def _curve_all_or_nothing(self):
        if bool(self.curve_secret) != bool(self.curve_clients):
            given, missing = (
                ("curve_secret", "curve_clients")
                if self.curve_secret
                else ("curve_clients", "curve_secret")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: CURVE needs both the server's secret key "
                "and the folder of client public keys it accepts (`kiwi keys` makes them)"
            )
        return self


class InputLimits(Frozen):
    """What the slow process and query clients may ask of one tick (issue 9: a sender must not
    be able to slow the loop or grow its memory)."""

    max_chunk_rows: int = Field(200, ge=1, le=10_000, description="rows in one action chunk")
    max_chunk_s: float = Field(10.0, gt=0, description="span of one chunk (rows x dt)")
    max_future_s: float = Field(
        0.5, ge=0, description="capture times and chunk starts this far ahead of now: refused"
    )
    max_age_s: float = Field(5.0, gt=0, description="... and this far behind: refused")
    messages_per_tick: int = Field(16, ge=1, description="observation messages read per tick")
    bytes_per_tick: int = Field(
        8 * 1024 * 1024, ge=1024, description="observation bytes decoded per tick"
    )
    queries_per_tick: int = Field(4, ge=1, description="status/clock queries answered per tick")
    grasp_query_interval_s: float = Field(
        0.2, ge=0, description="grasp forecasts for clients: at most one per this many seconds"
    )


class FaultConfig(Frozen):
    """When a flaky servo bus stops the arm. A failed read (after the bus's retries) holds the
    last good joints for that tick; the loop stops only past these bounds."""

    max_consecutive_failures: int = Field(
        25, ge=1, description="failed bus cycles in a row (0.5 s at 50 Hz) before stopping"
    )
    max_failure_rate: float = Field(
        0.2, gt=0, le=1, description="share of failed cycles over the window before stopping"
    )
    window_ticks: int = Field(500, ge=10, description="the window for max_failure_rate")
    bus_timeout_ms: float = Field(
        20.0,
        gt=0,
        description="a whole reply's wait; 20 ms tolerates a USB adapter's 16 ms latency timer",
    )
    bus_retries: int = Field(
        2, ge=0, description="extra attempts at a transaction before the cycle counts as failed"
    )


class ChunkExecution(Frozen):
    """How the fast loop executes a policy's action chunks (``runtime.chunk_mode``;
    robot_runtime/chunk_modes.py)."""

    old_weight: float = Field(
        0.3, ge=0, le=1, description="blend: weight of the old chunk over the overlap (LeRobot)"
    )
    join_rows: int = Field(
        10, ge=1, le=200, description="latent: rows over which a new chunk's offset decays"
    )
    forecast_rows: int = Field(
        25, ge=1, le=200, description="latent: rows the prior rolls a chunk forward before it runs"
    )
    limit_margin_deg: float = Field(
        1.0, ge=0, description="latent: a row this far past a joint limit refuses the chunk"
    )
    forecast_margin_deg: float = Field(
        5.0, ge=0, description="latent: a forecast joint this far past a limit refuses the chunk"
    )
    object_shift: bool = Field(
        True,
        description="latent: move the chunk with the object's displacement between the "
        "capture-time belief and the belief now (until the hand closes)",
    )
    max_shift_m: float = Field(0.05, ge=0, description="latent: largest object shift applied")
    open_above: float = Field(
        30.0, ge=0, le=100, description="latent: a gripper command below this holds the object"
    )


class RuntimeConfig(Frozen):
    rate_hz: float = Field(50.0, ge=1, le=1000, description="fast-loop rate; the model's step")
    checkpoint: str = Field(
        "shipped:grasp_world_model.safetensors",
        description="world model file; shipped:NAME is in robot_runtime/assets",
    )
    buffer_ticks: int = Field(256, ge=8, description="ring buffer of past ticks for replay")
    mode: Literal["compensated", "stale"] = "compensated"
    threads: int = Field(1, ge=1, description="torch threads of the loop (pin: 1 on 2 cores)")
    torque_off_on_exit: bool = True
    telemetry_hz: float = Field(10.0, gt=0)
    seed: int = 0
    limits: InputLimits = InputLimits()
    faults: FaultConfig = FaultConfig()
    chunk_mode: Literal["latest", "blend", "latent"] = Field(
        "blend",
        description="action chunks: newest wins (latest), LeRobot's weighted average over the "
        "overlap (blend), or placed on the world model's belief at execution time (latent)",
    )
    chunk: ChunkExecution = ChunkExecution()


class SlowConfig(Frozen):
    """The slow perception/VLA process."""

    rate_hz: float = Field(5.0, gt=0, description="observations per second")
    latency_ms: float = Field(150.0, ge=0, description="processing time added before posting")
    image_size: int = Field(128, ge=32, description="wrist frames the perception reads")
    camera_hz: float = Field(25.0, gt=0, description="frames per second the sim publishes")
    noise_far_m: float = 0.016
    noise_near_m: float = 0.003
    noise_far_deg: float = 25.0
    noise_near_deg: float = 3.0
    seed: int = 0


class SafetySection(Frozen):
    max_step_deg: float = Field(4.0, gt=0, description="per tick")
    slow_after_s: float = Field(0.6, gt=0, description="no observation for this long: slow down")
    hold_after_s: float = Field(1.5, gt=0, description="no observation for this long: hold")
    slow_factor: float = Field(0.25, gt=0, le=1)


class GraspControllerConfig(Frozen):
    aim: Literal["first", "track"] = Field(
        "first",
        description="first: plan from the first estimate and keep it (the gate then "
        "judges it after a close look); track: re-aim from the latest estimate until descent "
        "(the shipped success head was calibrated on `first` grasps: with `track`, gate with care)",
    )
    track_gain: float = Field(
        1.0,
        gt=0,
        le=1,
        description="aim=track: each fresh tick moves the aim this share of the way to the "
        "latest estimate (a low-pass filter; 1 jumps straight to it)",
    )
    pregrasp_height_m: float = 0.08
    grasp_height_m: float = 0.024
    lift_height_m: float = 0.09
    approach_s: float = 1.2
    settle_s: float = 0.6  # at pre-grasp: let close looks correct the estimate
    descend_s: float = 1.0
    close_s: float = 0.6
    lift_s: float = 1.0
    hold_s: float = 1.0
    lost_after_s: float = Field(
        5.0, gt=0, description="searching this long without an observation: the attempt is lost"
    )
    search_height_m: float = Field(
        0.14, gt=0, description="second half of a search: look from this high (a wider view)"
    )


class GraspGateConfig(Frozen):
    """The grasp-success predictor and the commit gate (`kiwi train grasp` fits the head)."""

    enabled: bool = True
    threshold: float = Field(0.5, ge=0, le=1, description="commit when P(success) >= this")
    retries: int = Field(2, ge=0, description="back-offs before giving up")
    samples: int = Field(64, ge=1, description="K rollouts per forecast")
    horizon: int = Field(20, ge=1, description="H ticks of the commit plan rolled out")
    max_belief_age_s: float = Field(
        0.8,
        gt=0,
        description="never decide on a belief whose newest observation is older: wait for one",
    )
    obs_every: int = Field(10, ge=1, description="training: one observation every N ticks")
    train_samples: int = Field(8, ge=1, description="training: rollouts per recorded decision")
    epochs: int = Field(40, ge=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    calibration_episodes: int = Field(
        200,
        ge=0,
        description="closed-loop grasps (own seeds) the calibration (temperature and bias) "
        "is fitted on; "
        "0: fit on the recorded held-out decisions instead",
    )


class RobotSection(Frozen):
    """The real arm `kiwi run` drives (configs/so100.yaml, so101.yaml, koch.yaml); the command
    line's --robot, --port and --calibration override these."""

    type: Literal["so100", "so101", "koch"] | None = None
    port: str | None = Field(None, description="serial port, e.g. /dev/ttyACM0")
    calibration: str | None = Field(
        None, description="LeRobot-layout calibration file; None: LeRobot's own file for `id`"
    )
    id: str = Field(
        "kiwi", description="LeRobot's robot id: its calibration is robots/<type>_follower/<id>"
    )
    joints: tuple[str, ...] = Field(
        (), description="joint names, checked against the arm's driver when given"
    )


class SimConfig(Frozen):
    """`kiwi sim`: the dry run."""

    attempts: int = Field(3, ge=1, description="grasp attempts (episodes)")
    seed: int = Field(1000, description="seed of the first episode (held out from training)")
    episode_s: float = Field(16.0, gt=0, description="longest attempt (with back-offs)")


class GraspJob(Frozen):
    """configs/sim_grasp.yaml: the grasp world model, the runtime and the dry run."""

    task: Literal["grasp"] = "grasp"
    data: GraspDataConfig = GraspDataConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    slow: SlowConfig = SlowConfig()
    safety: SafetySection = SafetySection()
    controller: GraspControllerConfig = GraspControllerConfig()
    gate: GraspGateConfig = GraspGateConfig()
    link: LinkConfig = LinkConfig()
    sim: SimConfig = SimConfig()
    robot: RobotSection = RobotSection()


class LeRobotDataConfig(Frozen):
    """Which LeRobotDataset v3.0 folder the model learns from, which of its features it reads,
    and which episodes it never trains on."""

    path: str | None = Field(None, description="dataset folder (meta/info.json); --data wins")
    vector_keys: tuple[str, ...] = Field(
        ("observation.state",), min_length=1, description="vector features the MLP reads"
    )
    cameras: tuple[str, ...] | None = Field(
        None, description="camera features the CNN reads; None: every camera of the dataset"
    )
    holdout_every: int = Field(
        10,
        ge=2,
        description="episode i is held out (never trained on) when i % holdout_every == "
        "holdout_every - 1: the split stays the same while a dataset grows",
    )
    max_episodes: int | None = Field(
        None, gt=0, description="use the first N committed episodes only (None: all)"
    )


class DatasetLabConfig(LabConfig):
    episodes: int = Field(20, gt=0, description="held-out episodes evaluated (the first ones)")
    strip_frames: int = Field(
        8, ge=2, description="frames in recon.png's and imagination.png's image strips"
    )


class LeRobotJob(Frozen):
    """configs/so101_pixels.yaml: a world model on any LeRobot dataset with a state vector, an
    action and cameras. The model's keys come from ``data`` (``model.mlp_keys`` and
    ``model.cnn_keys`` are filled in from it; the resolved file beside a run names them)."""

    task: Literal["lerobot"] = "lerobot"
    data: LeRobotDataConfig = LeRobotDataConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    lab: DatasetLabConfig = DatasetLabConfig()
    gate: GraspGateConfig = Field(
        GraspGateConfig(obs_every=1, calibration_episodes=0),
        description="`kiwi train grasp --data` on the dataset's next.success labels: horizon, "
        "rollouts, epochs, calibration share (no simulator: calibrated on recorded decisions)",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_keys_from_data(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        data = raw.get("data") or {}
        vectors = list(data.get("vector_keys") or LeRobotDataConfig().vector_keys)
        cameras = data.get("cameras")
        model = dict(raw["model"])
        for name, want, section in (
            ("mlp_keys", vectors, "vector_keys"),
            ("cnn_keys", cameras, "cameras"),
        ):
            if name not in model:
                model[name] = want or []
            elif want is not None and list(model[name]) != list(want):
                raise ValueError(
                    f"model.{name} {list(model[name])} differs from data.{section} {want}: "
                    f"name the keys in data.{section} only"
                )
        return {**raw, "model": model}


JOBS = {"pendulum": PendulumJob, "grasp": GraspJob, "lerobot": LeRobotJob}
GRASP_EVAL_SEED = 200_000  # evaluations start here, far from `kiwi collect`'s training seeds
GRASP_CALIBRATION_SEED = 150_000  # `kiwi train grasp` calibrates on these
# `kiwi eval chunks`: held out from every range in configs/sim_grasp.yaml's header (0..2516,
# 9000.., 100000.., 150000.., 200000.., 300000..)
CHUNK_EVAL_SEED = 400_000
Job = TypeVar("Job", bound=BaseModel)


def resolve_path(path: str | Path) -> Path:
    """``pendulum``, ``pendulum.yaml`` or ``configs/pendulum.yaml`` (as the README writes it,
    from any working directory) finds the project's configs/pendulum.yaml; a real path wins."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml")
    if not p.is_absolute() and p.parts[:1] == (CONFIG_DIR.name,):
        shipped += (CONFIG_DIR.parent / p,)
    for candidate in shipped:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {path}")


def deep_merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for k, v in overlay.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}`` with value parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {e}") from e
    node: Any = parsed
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def read_with_base(path: Path, depth: int = 0) -> dict:
    """A config file's mapping, laid over the file its ``base:`` key names (resolved beside it,
    then in configs/), so a robot's file says only what differs from the job it extends."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if depth >= 4:
        raise ConfigError(f"{path}: base files nest more than 4 deep (a loop?)")
    beside = path.parent / str(base)
    base_path = beside if beside.is_file() else resolve_path(str(base))
    return deep_merge(read_with_base(base_path, depth + 1), raw)


def load_config(
    path: str | Path,
    cls: type[Job],
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
) -> tuple[Job, Path]:
    path = resolve_path(path)
    raw = read_with_base(path)
    presets = raw.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path}: no preset {preset!r} (has: {sorted(presets)})")
        raw = deep_merge(raw, presets[preset])
    for text in overrides:
        raw = deep_merge(raw, parse_override(text))
    try:
        return cls.model_validate(raw), path
    except ValidationError as e:
        raise ConfigError(describe_errors(path, e, cls, bool(overrides))) from None


def describe_errors(
    path: Path, error: ValidationError, cls: type[BaseModel], with_overrides: bool
) -> str:
    lines = [f"{path}{' (with --set overrides)' if with_overrides else ''}: invalid config"]
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _suggest(cls, err["loc"])
            lines.append(f"  {key}: unknown key{hint}")
        else:
            lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def _suggest(cls: type[BaseModel], loc: tuple) -> str:
    model: Any = cls
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_job(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None
) -> tuple[BaseModel, Path]:
    """Any job file: its top-level ``task`` names the job (pendulum, grasp)."""
    resolved = resolve_path(path)
    raw = read_with_base(resolved)
    task = raw.get("task", "pendulum")
    if task not in JOBS:
        raise ConfigError(f"{resolved}: task {task!r} is not one of {sorted(JOBS)}")
    return load_config(resolved, JOBS[task], overrides, preset)


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
