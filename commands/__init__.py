"""The commands of `run_daemon.py`, one module per family."""
