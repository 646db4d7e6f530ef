"""Fuzzing every decoder and handshake parser: ``python -m tests.fuzz --inputs N``.

One invariant, fed whole and byte by byte: any input parses, or raises
:class:`~tunconnector.errors.RemoteProtocolError`, or is a counted drop. Anything else
(IndexError, struct.error, ValueError, a crypto library's exception ...) is a bug: the
runner prints it with the input and exits 1.

Targets live in ``tests/fuzz/targets/*.py``; every module there is imported and
registers its parsers with :func:`tests.fuzz.registry.register` (see README.md here).
"""
