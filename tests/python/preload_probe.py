"""Imported through ``preload`` by test_fork_server.py: remembers which process imported it."""

import os

IMPORTED_BY = os.getpid()
