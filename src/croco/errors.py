class CrocoError(Exception):
    """An error the user can fix; the command line prints its one-sentence message without a traceback."""
