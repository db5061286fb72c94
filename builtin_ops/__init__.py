"""builtin_ops."""
