"""The old import path of `dytune.conversion.calibration_data` (benchmarks/recovery_reconstruct.py still imports it
from here); remove once nothing does."""

from dytune.conversion.calibration_data import calibration_batches, calibration_texts_from_source, render_chat  # noqa: F401
