"""The reliability suite (marker ``reliability``): crashes, restarts, faults, fuzzing, isolation.

A package, so that its conftest does not shadow ``tests/conftest.py`` and the kill -9
tests' writer processes can import :mod:`reliability.helpers`.
"""
