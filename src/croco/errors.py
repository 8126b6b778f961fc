from croco.redaction import redact


class CrocoError(Exception):
    """An error the user can fix; the command line prints its one-sentence message without a traceback."""

    def __init__(self, message: str):
        super().__init__(redact(message))  # errors end up in logs and in Prefect's run records
