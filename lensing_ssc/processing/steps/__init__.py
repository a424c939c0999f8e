"""Processing steps (the seed's API)."""
from lensing_ssc.processing.steps.base import BaseStep

__all__ = ["BaseStep"]
