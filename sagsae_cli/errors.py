"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SagsaeError(Exception):
    """Bad input or a state the user must fix. The message says what is wrong and what to do."""
