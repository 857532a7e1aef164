"""River models wrapped by composition, and drift detectors: no I/O."""
