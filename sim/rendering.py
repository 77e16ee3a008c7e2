"""Headless rendering: pick MuJoCo's OpenGL backend before mujoco is imported.

MuJoCo reads MUJOCO_GL once, at import. Unset, it tries GLFW, which needs a display; so we choose
a headless backend whose library is present: EGL (Mesa's llvmpipe works), then OSMesa. A user's
own MUJOCO_GL always wins. Physics alone needs no OpenGL: only code that renders calls
``require_rendering``.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

_LIBRARIES = {"egl": ("EGL", "OpenGL"), "osmesa": ("OSMesa",)}
INSTALL_HINT = (
    "install a headless OpenGL: `apt-get install -y libegl1 libgl1` (EGL) or "
    "`apt-get install -y libosmesa6` (OSMesa), or set MUJOCO_GL=glfw with a display"
)


class RenderingUnavailable(OSError):
    """A system library is missing (like an ImportError of something pip cannot install)."""


def choose_backend() -> str | None:
    """Sets MUJOCO_GL (if unset and mujoco not yet imported) to the first headless backend whose
    libraries load. Returns the backend in effect, or None when none is available."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if "mujoco" in sys.modules:
        return None  # too late to choose; mujoco decided at import
    for backend, libs in _LIBRARIES.items():
        if all(ctypes.util.find_library(lib) for lib in libs):
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
    return None


def require_rendering() -> str:
    backend = os.environ.get("MUJOCO_GL") or choose_backend()
    if backend is None:
        raise RenderingUnavailable(f"no OpenGL backend for MuJoCo rendering: {INSTALL_HINT}")
    return backend


def make_renderer(model, height: int, width: int):
    """A mujoco.Renderer, with a clear error naming what to install when OpenGL fails."""
    require_rendering()
    import mujoco

    try:
        return mujoco.Renderer(model, height, width)
    except Exception as e:  # mujoco raises several types when no GL context can be made
        raise RenderingUnavailable(
            f"MuJoCo could not render with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {e}; "
            f"{INSTALL_HINT}"
        ) from e
