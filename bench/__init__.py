"""authproxy's benchmarks: bench/speed.py and bench/revocation_lag.py (bench/README.md)."""
