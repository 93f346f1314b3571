"""The process side of running waypoints, for the shells above the pure core.

The real Envoy binary (``envoy_process``), free ports (``ports``), the garbage collector's
pause around a translation (``collector``), and the files the CLI reads and writes: the input
world (``inputs``) and the SDS files beside the certificates (``sds``).
"""
