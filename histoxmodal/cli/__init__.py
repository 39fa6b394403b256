"""The ``histoxmodal`` command line: parse arguments, build typed configs, call the library."""
