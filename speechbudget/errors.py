"""User-facing errors.

Anything raised as a :class:`SpeechBudgetError` is printed by the CLI as a single line
(no traceback): the message must say what to fix.
"""

import shutil


class SpeechBudgetError(Exception):
    """An error caused by the user's input (bad path, bad config, missing stage output)."""


class OptionError(SpeechBudgetError):
    """A bad value of one named setting: the CLI calls it ``--data-hours``, a recipe ``plan.data_hours``.

    The library names the setting once; whoever reads it from the user words the message
    (:meth:`as_key` for recipes), so an error inside ``speechbudget run`` names the recipe key.
    """

    def __init__(self, option: str, problem: str):
        self.option, self.problem = option, problem
        super().__init__(f"--{option} {problem}")

    def as_key(self, section: str) -> str:
        return (
            f"{section}.{self.option.replace('-', '_')} {self.problem} (set in the recipe or as an override)"
        )


def require_program(name: str, otherwise: str) -> str:
    """The path of the executable ``name`` (a Debian package of the same name), or a one-line error
    that says how to install it or, ``otherwise``, what to do without it."""
    path = shutil.which(name)
    if path is None:
        raise SpeechBudgetError(
            f"{name} not found: install it with `apt-get install {name}` (or `brew install {name}`), {otherwise}"
        )
    return path
