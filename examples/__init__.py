"""The example scripts, runnable as files (python examples/circle.py) or modules."""
