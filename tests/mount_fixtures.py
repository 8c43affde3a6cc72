"""Fixtures that mount blfs for real (filled in with the FUSE adapter)."""
