"""processing package."""
