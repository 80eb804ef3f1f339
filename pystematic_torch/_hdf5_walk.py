"""Walking HDF5 files; shared by the HDF5 dataset and writer and the recorder's HDF5 backend."""
from typing import Any, List


def dataset_names(group: Any) -> List[str]:
    """The paths of every dataset below ``group`` (an open h5py file or group)."""
    import h5py

    names: List[str] = []
    group.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset)
                     else None)  # fmt: skip
    return names
