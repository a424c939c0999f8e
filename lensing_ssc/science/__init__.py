"""science package."""
