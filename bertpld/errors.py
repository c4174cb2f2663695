"""The one exception type for user mistakes.

Anything raised as `BertpldError` is printed by the CLI as a single line (``error: ...``) with a
non-zero exit, never as a traceback. Internal bugs stay ordinary exceptions (or asserts).
"""


class BertpldError(Exception):
    """A user-facing error: bad input, bad config, missing file. The message is one line."""
