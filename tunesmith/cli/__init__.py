"""The command line: one parser built from a table of command groups; each command is a thin library call."""

from .main import EXIT_INTERRUPTED, EXIT_USER_ERROR, build_parser, main

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "main"]
