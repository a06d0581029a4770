"""dlforge's own exceptions: the CLI prints them as one line and exits with code 2."""


class DlforgeError(Exception):
    """A problem the user can fix (bad option, bad file, missing data): one clear line."""
