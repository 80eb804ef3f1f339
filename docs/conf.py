"""Sphinx configuration for the pystematic-torch documentation."""
import pystematic_torch

project = "pystematic-torch"
author = "The pystematic-torch developers"
copyright = "2026, the pystematic-torch developers"
release = pystematic_torch.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
exclude_patterns = ["_build"]
html_theme = "alabaster"
