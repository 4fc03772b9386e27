"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SagsaeError(Exception):
    """Bad input or a state the user must fix. The message says what is wrong and what to do."""


class PeerError(SagsaeError):
    """Raised on the other ranks of a torchrun job when rank 0 hit a SagsaeError: rank 0 prints the
    message, the others exit with code 2 quietly instead of failing inside a collective."""
