"""Session fixtures shared by all tests: the real local Slurm cluster (tests/slurm_cluster.py)."""
pytest_plugins = ["tests.slurm_cluster"]
