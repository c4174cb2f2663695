"""The one exception type for user mistakes.

Anything raised as `BertpldError` is printed by the CLI as a single line (``error: ...``) with a
non-zero exit, never as a traceback. Internal bugs stay ordinary exceptions (or asserts).
"""


class BertpldError(Exception):
    """A user-facing error: bad input, bad config, missing file. The message is one line: a
    message with line breaks (e.g. one quoting a parser's error) has its lines joined by '; '."""

    def __init__(self, message: object = "") -> None:
        lines = (line.strip() for line in str(message).splitlines())
        super().__init__("; ".join(line for line in lines if line))
