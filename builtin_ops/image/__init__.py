"""Image ops on Pillow."""
