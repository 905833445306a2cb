"""The package version: the one place it is written (setup.py reads this file, the package
re-exports it as ``keras_roadmap.__version__``; CHANGELOG.md names the same release)."""

__version__ = "0.1.0"
