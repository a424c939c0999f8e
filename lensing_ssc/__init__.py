"""lensing_ssc: weak-lensing super-sample-covariance pipeline."""
__version__ = "0.1.0"
