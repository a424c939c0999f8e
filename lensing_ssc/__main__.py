"""``python -m lensing_ssc`` is the ``lensing-ssc`` command."""
from lensing_ssc.cli import entry_point

entry_point()
