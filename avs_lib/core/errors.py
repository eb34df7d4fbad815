"""The workbench's errors, at the bottom of the package: every layer raises them, none imports upwards for them."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot be used. The message names the key, its source and the fix."""


class DataError(ValueError):
    """A dataset root or file is not what its layout expects. The message names the file."""


BUILD_HINT = ("build the default world with `make run` (or `.venv/bin/avs pipeline --no-notebooks`), "
              "a world of your own with `.venv/bin/avs world --out ROOT`, or point data_root at an AVSBench/VPO root")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class MemoryFileError(ValueError):
    """A memory file that cannot be used; the message names it and says how to rebuild it."""
