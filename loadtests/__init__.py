"""Load tests and benchmarks (locust, pytest-benchmark); traffic goes to loopback only."""
