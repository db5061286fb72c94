"""Object stores: the ObjectStore seam and its implementations."""
