"""``shipped:NAME`` names a model in robot_runtime/assets, with or without its extension."""

from __future__ import annotations

import pytest

from robot_runtime.assets import ASSETS, resolve
from world_model.errors import CheckpointError


def test_a_shipped_name_resolves_with_or_without_its_extension():
    assert resolve("shipped:grasp_world_model") == ASSETS / "grasp_world_model.safetensors"
    assert resolve("shipped:grasp_world_model.safetensors") == resolve("shipped:grasp_world_model")


@pytest.mark.parametrize("name", ["nope", "../assets.py", "../../README.md"])
def test_an_unknown_or_outside_name_is_refused_with_what_is_shipped(name):
    with pytest.raises(CheckpointError, match="is not in .*shipped: .*grasp_world_model"):
        resolve(f"shipped:{name}")


def test_a_path_must_exist(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve(str(tmp_path / "missing.safetensors"))
