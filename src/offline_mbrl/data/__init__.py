"""Offline datasets: D4RL/Minari loading, resolution by name, download, collection."""

from offline_mbrl.data.d4rl import load_d4rl_hdf5, write_d4rl_hdf5
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.info import dataset_info
from offline_mbrl.data.resolve import load_dataset

__all__ = ["OfflineDataset", "dataset_info", "load_d4rl_hdf5", "load_dataset", "write_d4rl_hdf5"]
