"""Dataset files: the readers of each official format (one file per dataset family) and the dSprites generator.

dataset.py holds the one table of facts and picks a reader from it; the readers import nothing above them.
"""


class DataError(Exception):
    """A data file or folder that cannot be used; the message says which and what to do."""
