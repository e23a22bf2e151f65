"""Property-based fuzzing of the parsers that read what clients send (issue #19).

A package, unlike the other test directories: its ``conftest.py`` is then imported as
``fuzz.conftest``, and does not take the place of ``tests/conftest.py`` as the module
``conftest`` that the integration tests import their helpers from.
"""
