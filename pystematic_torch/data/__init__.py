"""Feeding the training loop: :class:`SmartDataLoader` and the HDF5 dataset and writer.

h5py is imported only when an HDF5 class opens a file, so importing this package stays cheap.
"""
from ._hdf5 import HDF5Dataset, HDF5Writer
from ._loader import SmartDataLoader

__all__ = ["SmartDataLoader", "HDF5Dataset", "HDF5Writer"]
