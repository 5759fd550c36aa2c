"""Typed task configs and their torch-free validation, run by the launcher before submitting."""
