"""Benchmarks of the service, run by hand (not tests): ``python -m service.benchmarks.<name> --help``."""
