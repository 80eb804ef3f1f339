# Above the 1.x releases of the earlier project of this name on PyPI.
__version__ = "2.0.0.dev0"
