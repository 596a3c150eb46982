"""Moved to :mod:`mtt_fast.experts`; this module only re-exports it for older imports."""

from mtt_fast.experts.importer import import_buffers  # noqa: F401
from mtt_fast.experts.store import FORMAT, FORMAT_VERSION, META, TrajectoryStore  # noqa: F401
