"""Sans-I/O protocol core: plain classes over bytes, time passed in as ``now``.

Nothing in this package imports asyncio, socket or os.
"""
