"""One module per protocol area; each registers its parsers on import."""
