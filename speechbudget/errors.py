"""User-facing errors.

Anything raised as a :class:`SpeechBudgetError` is printed by the CLI as a single line
(no traceback): the message must say what to fix.
"""


class SpeechBudgetError(Exception):
    """An error caused by the user's input (bad path, bad config, missing stage output)."""
