"""Camera frames as mp4 through PyAV: encode an episode, append it to a shared file by stream copy
(no re-encoding of what is already there), decode the frames of one episode by seeking to its
``from_timestamp``.

The encoder is AV1 (``libsvtav1``, lerobot's default) when this PyAV build has it, else H.264
(``libx264``), else MPEG-4 part 2; ``info.json`` records which (``video.codec``: av1/h264/mpeg4).
yuv420p, a keyframe every 2 frames (lerobot's ``g=2``) so seeking to any episode is cheap.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..atomic import atomic_path
from .lerobot_format import DatasetError

# (encoder, codec name in info.json, options)
ENCODERS = (
    ("libsvtav1", "av1", {"g": "2", "crf": "30", "preset": "8"}),
    ("libx264", "h264", {"g": "2", "crf": "23", "bf": "0", "preset": "veryfast"}),
    ("mpeg4", "mpeg4", {"g": "2", "qscale": "3", "bf": "0"}),
)


def available_encoder(preferred: str | None = None) -> tuple[str, str, dict]:
    """The first of ``ENCODERS`` this PyAV build can encode with (or ``preferred``: an encoder or
    codec name such as ``av1``/``libx264``)."""
    for encoder, codec, options in ENCODERS:
        if preferred not in (None, encoder, codec):
            continue
        try:
            av.codec.Codec(encoder, "w")
        except Exception:  # av.codec.codec.UnknownCodecError and friends
            continue
        return encoder, codec, dict(options)
    raise DatasetError(
        f"no video encoder {preferred or ''} in this PyAV build (tried "
        f"{[e for e, _, _ in ENCODERS]}); store cameras as images instead"
    )


# An encoder that has not finished in this long is hung, not slow (SVT-AV1 3.1.x deadlocks now and
# then under CPU contention: one episode in ~650 on a loaded 2-core machine): seconds plus seconds
# per pixel (a 261-frame 64x64 episode takes ~0.3 s; 640x480 ~100x that)
ENCODE_TIMEOUT_S = 30.0
ENCODE_TIMEOUT_S_PER_MPIXEL = 5.0
ENCODE_ATTEMPTS = 3


def encode_video(
    frames: np.ndarray, path: Path, fps: int, encoder: str | None = None
) -> tuple[str, str]:
    """Writes ``frames [T, H, W, 3]`` uint8 RGB to a new mp4 at ``path``, frame t at t/fps s.
    Returns (encoder, codec). An encoder that hangs is abandoned (its thread left blocked, its
    output discarded) and the episode encoded again by a fresh one, up to ``ENCODE_ATTEMPTS``
    times; then a DatasetError says so."""
    enc, codec, options = available_encoder(encoder)
    frames = np.ascontiguousarray(frames)
    timeout_s = ENCODE_TIMEOUT_S + ENCODE_TIMEOUT_S_PER_MPIXEL * frames.size / 3e6
    for attempt in range(ENCODE_ATTEMPTS):
        # each attempt writes its own file: a hung encoder that wakes later writes only there
        tag = f"{attempt}.{os.getpid()}-{secrets.token_hex(4)}"
        out = path.with_name(f".{path.stem}-{tag}.kiwi.tmp")
        failure: list[BaseException] = []

        def run(out: Path = out, failure: list[BaseException] = failure) -> None:
            try:
                _encode(frames, out, fps, enc, options)
            except BaseException as e:  # reported by the caller's thread
                failure.append(e)

        worker = threading.Thread(target=run, name="kiwi-video-encode", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            continue  # hung: leave it, try a fresh encoder
        if failure:
            out.unlink(missing_ok=True)
            raise failure[0]
        os.replace(out, path)
        return enc, codec
    raise DatasetError(
        f"the {enc} encoder hung {ENCODE_ATTEMPTS} times on {path.name} ({len(frames)} frames, "
        f"over {timeout_s:.0f} s each); run it again (the same command resumes) or store "
        "cameras as images (`--image-storage image`)"
    )


def _encode(frames: np.ndarray, path: Path, fps: int, enc: str, options: dict) -> None:
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise
    t, h, w, _ = frames.shape
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(enc, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _copy_stream(out, template):
    stream = out.add_stream_from_template(template, opaque=True)
    stream.time_base = template.time_base  # PyAV < 16 leaves it unset until the header
    return stream


def _copy_packets(src: Path, out, out_stream, offset_s: float, until_s: float | None) -> None:
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        offset = round(offset_s / tb)
        for packet in container.demux(stream):
            if packet.dts is None:  # the demuxer's empty flush packet
                continue
            if until_s is not None and packet.pts is not None and packet.pts * tb >= until_s:
                continue
            if packet.pts is not None:
                packet.pts += offset
            packet.dts += offset
            packet.stream = out_stream  # PyAV rescales from the packet's time base on mux
            out.mux(packet)


def append_video(target: Path, episode: Path, from_s: float) -> None:
    """Puts the episode's mp4 after the ``from_s`` seconds of ``target`` (stream copy), replacing
    ``target`` in one rename; without a ``target`` the episode's file becomes it."""
    target = Path(target)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(episode, target)
        return
    with atomic_path(target) as tmp:
        with av.open(str(target)) as first:
            template = first.streams.video[0]
            with av.open(str(tmp), "w", format="mp4") as out:
                out_stream = _copy_stream(out, template)
                _copy_packets(target, out, out_stream, 0.0, from_s - 1e-4)
                _copy_packets(episode, out, out_stream, from_s, None)
    Path(episode).unlink(missing_ok=True)


def truncate_video(path: Path, until_s: float) -> None:
    """Keeps the first ``until_s`` seconds of ``path`` (drops an episode that a crash left without
    metadata)."""
    with atomic_path(path) as tmp:
        with av.open(str(path)) as src:
            with av.open(str(tmp), "w", format="mp4") as out:
                out_stream = _copy_stream(out, src.streams.video[0])
                _copy_packets(path, out, out_stream, 0.0, until_s - 1e-4)


def video_duration_s(path: Path) -> float:
    """Seconds of video in ``path``: the last frame's time plus one frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = max((p.pts for p in container.demux(stream) if p.pts is not None), default=None)
        if last is None:
            return 0.0
        rate = stream.average_rate or stream.guessed_rate
        return float(last * stream.time_base + (1 / rate if rate else 0))


class VideoReader:
    """One open mp4; ``frames(from_s, times_s)`` decodes the frames at ``from_s + times_s``
    (each within ``tolerance_s``), seeking first to the keyframe at or before ``from_s``."""

    def __init__(self, path: Path, tolerance_s: float):
        self.path = Path(path)
        self.tolerance_s = tolerance_s
        try:
            self.container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as e:
            raise DatasetError(f"cannot open video {self.path}: {e}") from e
        self.stream = self.container.streams.video[0]
        # one reformatter for every frame: ``frame.to_ndarray(format=...)`` builds a new swscale
        # context per call (2 ms for a 64x64 frame, against 0.1 ms reused; same pixels)
        self._rgb = VideoReformatter()

    def iter_frames(self, from_s: float, times_s: np.ndarray) -> Iterator[np.ndarray]:
        """Yields ``[H, W, 3]`` uint8 RGB frames, one per entry of ``times_s`` (seconds within the
        episode), in order."""
        wanted = from_s + np.asarray(times_s, dtype=np.float64)
        if len(wanted) == 0:
            return
        tb = self.stream.time_base
        self.container.seek(int(from_s / tb), stream=self.stream, backward=True, any_frame=False)
        i = 0
        for frame in self.container.decode(self.stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * tb)
            if t > wanted[i] + self.tolerance_s:
                raise DatasetError(
                    f"{self.path}: no frame at {wanted[i]:.4f} s (next one at {t:.4f} s)"
                )
            if abs(t - wanted[i]) <= self.tolerance_s:
                yield self._rgb.reformat(frame, format="rgb24").to_ndarray()
                i += 1
                if i == len(wanted):
                    return
        raise DatasetError(
            f"{self.path} ends before {wanted[i]:.4f} s ({len(wanted) - i} frames missing)"
        )

    def close(self) -> None:
        self.container.close()
