"""Exception hierarchy of formdigits.

Every error carries an exit code (used once, at the CLI boundary) and a hint that tells
the user what to do. Per-file failures are not raised out of a batch: they are caught by
the stage that meets them and become rows of the ``errors`` table, keyed by ``code``.
"""

from __future__ import annotations


class FormdigitsError(Exception):
    """Base class: a failure formdigits understands and can explain."""

    exit_code: int = 1
    code: str = "error"
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def user_message(self) -> str:
        """The message plus what to do about it, for humans."""
        msg = str(self)
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class UsageError(FormdigitsError):
    """Bad command-line arguments or settings."""

    exit_code = 2
    code = "usage"
    hint = "Run the command with --help to see the accepted options."


class ConfigError(FormdigitsError):
    """A settings or template file is invalid."""

    exit_code = 3
    code = "config"
    hint = "Fix the named key in the file and run again."


class DataNotFoundError(FormdigitsError):
    """A dataset or input folder could not be found."""

    exit_code = 4
    code = "data_not_found"
    hint = "Set FORMDIGITS_DATA to the folder holding mnist/ and usps/, or pass --data DIR."


class DatasetFormatError(FormdigitsError):
    """A dataset file exists but is truncated or not in the expected format."""

    exit_code = 4
    code = "dataset_format"
    hint = "Re-download or re-copy the named file; its size or header is wrong."


class ModelError(FormdigitsError):
    """A weights file is missing, tampered with, or of an unknown architecture."""

    exit_code = 5
    code = "model"
    hint = "Pass --model with a weights file written by `formdigits train` or use the default."


class InputError(FormdigitsError):
    """One input file or page cannot be read (becomes an error row in a batch)."""

    exit_code = 6
    code = "input"
    hint = "Check the file: rescan or re-export it, then run again (it will be retried)."


class UnsupportedFormatError(InputError):
    """The file is not an image or PDF formdigits can read."""

    code = "unsupported_format"
    hint = "Supported: PNG, JPEG, TIFF (incl. multi-page, fax G4) and PDF. Remove or convert it."


class CorruptFileError(InputError):
    """The file claims a known format but cannot be decoded (truncated, damaged)."""

    code = "corrupt_file"
    hint = "The file is damaged or truncated; rescan or re-export it."


class LimitExceededError(InputError):
    """The file exceeds a configured size/pixel/page limit (e.g. a decompression bomb)."""

    code = "limit_exceeded"
    hint = "Raise the limit in the settings (limits.*) if the file is trusted."


class EncryptedPdfError(InputError):
    """The PDF is password protected."""

    code = "encrypted_pdf"
    hint = "Save an unprotected copy of the PDF and put it in the folder."


class RegistrationError(InputError):
    """A page could not be matched to any known form template."""

    code = "unregistered_page"
    hint = "Check that the page is one of the configured templates (--template) and is not blank."


class OutputError(FormdigitsError):
    """Results cannot be written (disk full, permissions, locked output)."""

    exit_code = 7
    code = "output"
    hint = "Check free space and permissions of the output folder; earlier results are intact."


class OutputLockedError(OutputError):
    """Another formdigits run holds the output folder."""

    code = "output_locked"
    hint = "Wait for the other run to finish, or pass a different --out folder."


class StrictModeError(FormdigitsError):
    """--strict was given and some inputs ended as error rows."""

    exit_code = 8
    code = "strict"
    hint = "See the errors table in the output folder for what failed and why."
