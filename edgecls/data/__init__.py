"""Folder datasets: class map, image reading, preprocessing presets, verification."""
