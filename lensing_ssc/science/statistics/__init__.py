"""statistics package."""
