"""The one exception type a user sees: something they can fix, said in words they can act on."""


class OptimlabError(Exception):
    """A problem with the user's input, data or environment.

    The message says what was wrong, what is valid and, where it helps, what to do. The command line
    prints it without a traceback and exits with status 2.
    """


class DataFormatError(OptimlabError):
    """A dataset file that is not what its format promises (wrong magic, truncated, bad labels)."""


class DatasetNotFoundError(OptimlabError):
    """A named dataset that was found nowhere and could not be downloaded."""
