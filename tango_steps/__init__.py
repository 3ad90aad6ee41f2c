"""Tango's step code: everything a Metaflow step of the pipeline does (see docs/architecture.md)."""

import os

# MKL (torch's CPU BLAS here) may run a matmul on fewer threads than asked when the machine is busy
# (MKL_DYNAMIC, on by default), and fewer threads sum in another order: the same update then gave
# other bits under load (tests/e2e/test_flows.py's every-k-rounds run ended with a KL of -3.5e-10 where
# the uninterrupted run had exactly 0, 2026-12-01). Fixed thread counts keep a step's result a
# function of its inputs, so that a resumed or forked run matches an uninterrupted one. Set before
# torch is imported: every step imports this package first.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
