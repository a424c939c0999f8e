"""Mock FastPM usmesh light cones with a known linear P(k) (see :mod:`lensing_ssc.mock.lightcone`)."""
from lensing_ssc.mock.lightcone import density_grid, mock_config_defaults, write_mock_lightcone

__all__ = ["density_grid", "mock_config_defaults", "write_mock_lightcone"]
