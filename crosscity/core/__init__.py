"""Torch-free pieces every layer may use: atomic writes (atomic_io), exit codes (exit_codes)."""
