"""Camera sources: frames as uint8 RGB [H, W, 3] stamped with their capture time.

Every source has the same small interface (``CameraSource``): ``read()`` returns the next frame
and the time it was captured, on the clock the source was given (``time.monotonic``: the
runtime's clock when both run on one machine), blocking until that frame is due like a real
camera does; ``close()``; ``fps`` and ``size`` (width, height) of what ``read()`` returns.

- ``OpenCVCamera``: a USB camera by index (``0``) or device path (``/dev/video0``), or anything
  else OpenCV opens (a URL, a file); requested fps and capture resolution; BGR -> RGB.
- ``VideoFileCamera``: an mp4 (anything ffmpeg decodes, through imageio-ffmpeg) or a GIF
  (Pillow), played at its own frame rate or a given one, looping or ending. A reader that falls
  behind skips frames, as a camera's driver would, rather than replaying late ones in a burst.

Frames are centre-cropped to the output's aspect ratio, then resized (square pixels: the
perception's field of view stays the vertical one). ``parse_camera_spec("wrist=/dev/video0")``
reads the ``NAME=SOURCE`` syntax of ``--camera``; ``open_camera`` opens the source it names.
Failures are ``CameraError`` with a one-line message: ``EndOfStream`` when a non-looping file
ends, ``FrameReadError`` for one frame that could not be read (the publisher counts it).

OpenCV is optional (``pip install 'kiwi-runtime[camera]'``); files never need it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

CACHE_BYTES = 64 * 1024 * 1024  # a looping file up to this size replays from memory
GIF_DEFAULT_FRAME_MS = 100.0  # browsers' reading of a GIF frame without a duration
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_NAMES = {"state"}  # the camera message's joint-state field


class CameraError(ValueError):
    """A camera that cannot be opened or read; the message is one line and names the source."""


class EndOfStream(CameraError):
    """A non-looping video file has no more frames."""


class FrameReadError(CameraError):
    """One frame could not be read; the next read may succeed."""


class CameraSource(Protocol):
    fps: float  # frames per second read() delivers
    size: tuple[int, int]  # (width, height) of the frames read() returns

    def read(self) -> tuple[np.ndarray, float]:
        """The next frame, uint8 RGB [H, W, 3], and its capture time (seconds, source clock)."""
        ...

    def close(self) -> None: ...


# --- pure helpers -----------------------------------------------------------------------------


def fit_to_size(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` [H, W, 3] uint8 centre-cropped to the aspect of ``size`` (width, height), then
    resized to it (bilinear); unchanged when ``size`` is None or already its size."""
    if size is None:
        return image
    width, height = size
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if w * height > h * width:  # wider than the target: crop the sides
        crop_w = max(1, round(h * width / height))
        x0 = (w - crop_w) // 2
        image = image[:, x0 : x0 + crop_w]
    elif w * height < h * width:  # taller: crop top and bottom
        crop_h = max(1, round(w * height / width))
        y0 = (h - crop_h) // 2
        image = image[y0 : y0 + crop_h]
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, np.uint8)


def square(side: int) -> tuple[int, int]:
    """The (width, height) of ``slow.image_size`` frames."""
    return (side, side)


@dataclass(frozen=True)
class CameraSpec:
    """One ``--camera NAME=SOURCE``: ``device`` is an int index, a ``/dev/...`` path or a URL;
    ``file`` a video file path."""

    name: str
    source: str
    kind: str  # "device" | "file"

    @property
    def device(self) -> int | str:
        return int(self.source) if self.source.isdigit() else self.source


def parse_camera_spec(text: str) -> CameraSpec:
    """``wrist=0`` (USB index), ``wrist=/dev/video0`` (device path), ``wrist=rtsp://...``
    (OpenCV URL), ``wrist=clip.mp4`` / ``wrist=clip.gif`` (video file); CameraError otherwise."""
    name, sep, source = text.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise CameraError(
            f"camera {text!r} is not NAME=SOURCE (e.g. wrist=0, wrist=/dev/video0, wrist=clip.mp4)"
        )
    if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise CameraError(
            f"camera name {name!r} must be a letter or _ then letters, digits or _ (at most 64), "
            f"and not {sorted(RESERVED_NAMES)}"
        )
    if source.isdigit() or source.startswith("/dev/") or "://" in source:
        return CameraSpec(name, source, "device")
    return CameraSpec(name, source, "file")


# --- OpenCV -----------------------------------------------------------------------------------


def import_cv2():
    """OpenCV, with its log quiet (a failed open is our one-line error, not its warnings)."""
    try:
        import cv2
    except ImportError:
        raise CameraError(
            "USB cameras need OpenCV: pip install 'kiwi-runtime[camera]' "
            "(or opencv-python-headless)"
        ) from None
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # a build without the logging module: its warnings show
        pass
    return cv2


class OpenCVCamera:
    """A camera OpenCV opens: a USB index, a device path, a URL or a file. ``fps`` and
    ``capture_size`` (width, height) are asked of the driver (which may pick the nearest mode
    it has); ``size`` is what ``read()`` returns (None: as captured). The capture time is taken
    when ``grab()`` returns, before the frame is decoded. A file opened here is read as fast as
    it decodes; ``VideoFileCamera`` plays one at its rate."""

    def __init__(
        self,
        device: int | str,
        fps: float | None = None,
        size: tuple[int, int] | None = None,
        capture_size: tuple[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        cv2 = import_cv2()
        self.cv2, self.device, self.clock = cv2, device, clock
        if isinstance(device, str) and device.startswith("/dev/") and not Path(device).exists():
            raise CameraError(f"camera device {device} does not exist")
        if isinstance(device, str) and "://" not in device and not device.startswith("/dev/"):
            if not Path(device).is_file():
                raise CameraError(f"video file {device} does not exist")
        self.cap = cv2.VideoCapture(device)
        if not self.cap.isOpened():
            self.cap.release()
            raise CameraError(f"cannot open camera {device} (no such device, busy, or unreadable)")
        if capture_size is not None:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, capture_size[0])
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, capture_size[1])
        if fps is not None:
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        reported = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)  # what the driver chose
        self.fps = reported if 0 < reported <= 1000 else float(fps or 30.0)
        native = (
            int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        self.size = size or native
        self.is_file = isinstance(device, str) and Path(device).is_file()

    def read(self) -> tuple[np.ndarray, float]:
        if not self.cap.grab():
            if self.is_file:
                raise EndOfStream(f"{self.device}: end of video")
            raise FrameReadError(f"camera {self.device}: no frame (unplugged?)")
        t_capture = self.clock()
        ok, bgr = self.cap.retrieve()
        if not ok or bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise FrameReadError(f"camera {self.device}: frame could not be decoded")
        rgb = self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB)
        return fit_to_size(rgb, self.size), t_capture

    def close(self) -> None:
        self.cap.release()


# --- video files ------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    """The informative line of a decoder's error (ffmpeg's last stderr line, not its banner)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    useful = [ln for ln in lines if "rror" in ln or "nvalid" in ln or "not found" in ln]
    return (useful[-1] if useful else lines[-1])[:200]


def _ffmpeg_frames(path: Path) -> tuple[float, tuple[int, int], Callable[[], Iterator]]:
    """fps, (width, height) and a function that starts a fresh iterator of RGB frames."""
    import imageio_ffmpeg

    def start() -> Iterator[np.ndarray]:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        try:
            w, h = next(reader)["size"]
            for raw in reader:
                yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
        finally:
            reader.close()  # stops the ffmpeg process when a play is abandoned

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as e:
        raise CameraError(f"cannot read video {path}: {_one_line(e)}") from None
    fps = float(meta.get("fps") or 0.0)
    return fps, tuple(meta["size"]), start


def _gif_frames(path: Path) -> tuple[float, tuple[int, int], Callable[[], Iterator]]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            durations = [f.info.get("duration") or 0 for f in ImageSequence.Iterator(im)]
            size = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise CameraError(f"cannot read GIF {path}: {_one_line(e)}") from None
    ms = float(np.median([d for d in durations if d > 0])) if any(durations) else 0.0
    fps = 1000.0 / (ms or GIF_DEFAULT_FRAME_MS)

    def start() -> Iterator[np.ndarray]:
        with Image.open(path) as im:
            for frame in ImageSequence.Iterator(im):
                yield np.asarray(frame.convert("RGB"), np.uint8)

    return fps, size, start


class VideoFileCamera:
    """A video file played as a camera: frame i is due at ``start + i / fps`` on ``clock``;
    ``read()`` sleeps until it is due and stamps it with the time it returns. A reader that is
    more than a frame behind skips to the frame due now (the skipped ones show as a gap in
    capture times). ``loop``: start again at the end, else EndOfStream."""

    def __init__(
        self,
        path: str | Path,
        fps: float | None = None,
        size: tuple[int, int] | None = None,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "does not exist"
            raise CameraError(f"video file {self.path} {what}")
        opener = _gif_frames if self.path.suffix.lower() == ".gif" else _ffmpeg_frames
        native_fps, self.native_size, self._start = opener(self.path)
        if fps is not None and not (0 < fps <= 1000):
            raise CameraError(f"fps {fps} is outside 0..1000")
        if fps is None and not (0 < native_fps <= 1000):
            raise CameraError(f"video {self.path} has no usable frame rate; give one (fps)")
        self.fps = float(fps or native_fps)
        self.size = size or self.native_size
        self.loop, self.clock, self.sleep = loop, clock, sleep
        self._frames: Iterator[np.ndarray] | None = None
        self._t0: float | None = None
        self.index = 0  # the schedule slot of the next frame (counts across loops)
        self.plays = 0  # times the file was started
        self._cache: list[np.ndarray] | None = None  # a looping file's frames, when small

    def _play(self) -> Iterator[np.ndarray]:
        """One play of the file; the first one fills the cache a looping file replays from
        (no decoder start-up at each loop) when its frames fit in ``CACHE_BYTES``."""
        if self._cache is not None and self.plays > 1:
            yield from self._cache
            return
        cache: list[np.ndarray] | None = [] if self.loop else None
        size = 0
        for frame in self._start():
            if cache is not None:
                size += frame.nbytes
                if size > CACHE_BYTES:
                    cache = None  # too large to hold: each loop decodes again
                else:
                    cache.append(frame)
            yield frame
        if cache:
            self._cache = cache

    def _next_decoded(self) -> np.ndarray:
        for _ in range(2):  # at most one restart: a file with no frames must not spin
            if self._frames is None:
                self._frames = self._play()
                self.plays += 1
            try:
                return next(self._frames)
            except StopIteration:
                self._frames = None
                if not self.loop:
                    raise EndOfStream(f"{self.path}: end of video") from None
            except (OSError, RuntimeError) as e:
                self._frames = None
                raise FrameReadError(f"{self.path}: {_one_line(e)}") from None
        raise EndOfStream(f"{self.path}: no frames")

    def read(self) -> tuple[np.ndarray, float]:
        period = 1.0 / self.fps
        if self._t0 is not None:
            behind = int((self.clock() - self._t0) / period) - self.index
            for _ in range(max(0, behind)):  # late reader: drop the frames already past
                self._next_decoded()
                self.index += 1
        frame = self._next_decoded()
        if self._t0 is None:  # the schedule starts when the first frame is ready (the
            self._t0 = self.clock()  # decoder's start-up is not a late frame)
        wait = self._t0 + self.index * period - self.clock()
        if wait > 0:
            self.sleep(wait)
        self.index += 1
        t_capture = self.clock()  # the frame's moment; resizing it is processing, after
        return fit_to_size(frame, self.size), t_capture

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # a generator: closes the decoder it reads from
        self._frames = None


def open_camera(
    spec: CameraSpec,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    loop: bool = False,
    capture_size: tuple[int, int] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CameraSource:
    """The source ``spec`` names: devices and URLs through OpenCV, files played at their rate."""
    if spec.kind == "device":
        return OpenCVCamera(spec.device, fps, size, capture_size, clock)
    return VideoFileCamera(spec.source, fps, size, loop, clock)
