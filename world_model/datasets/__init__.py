"""Datasets on disk beyond the replay's ``.npz`` episodes: LeRobotDataset v3.0 folders, read and
written with pyarrow and PyAV only (no torch, no lerobot)."""

from .lerobot_format import SO_JOINT_NAMES, DatasetError, image_feature, load_info, video_feature
from .lerobot_reader import Episode, LeRobotReader, open_dataset
from .lerobot_writer import LeRobotWriter

__all__ = [
    "SO_JOINT_NAMES",
    "DatasetError",
    "Episode",
    "LeRobotReader",
    "LeRobotWriter",
    "image_feature",
    "load_info",
    "open_dataset",
    "video_feature",
]
