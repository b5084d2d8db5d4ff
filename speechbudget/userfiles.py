"""Reading the text files a user names (transcripts, label tables, recipes): a missing file, a folder
or a file that is not UTF-8 is one line that says which file and what to do, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .errors import SpeechBudgetError


def read_user_text(path: Union[str, Path], what: str) -> str:
    """The text of ``path``, the user's ``what`` (e.g. "transcripts file")."""
    path = Path(path)
    if path.is_dir():
        raise SpeechBudgetError(f"{what} {path} is a folder; give the file")
    if not path.is_file():
        raise SpeechBudgetError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpeechBudgetError(
            f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise SpeechBudgetError(f"cannot read {what} {path} ({e.strerror or e})") from None
