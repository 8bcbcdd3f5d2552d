"""Error types raised on user mistakes (bad data, bad configuration)."""


class DataError(ValueError):
    """Bad or missing data: the message names the file (or root) and the problem in one line."""
