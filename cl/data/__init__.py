"""Data: scenario settings and stream transforms, on-device augmentation, decoded-array caches."""
