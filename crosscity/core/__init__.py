"""Torch-free pieces every layer may use: atomic writes, exit codes."""
