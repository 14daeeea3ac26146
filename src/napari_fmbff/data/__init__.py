"""Pixels in and out of files: image I/O, data-set folder layouts, the procedural generator (no torch)."""
