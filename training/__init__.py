"""Training library used by train.py: config schema, loop pieces, run directories."""
