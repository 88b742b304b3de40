"""Errors a user can cause. Raised with one sentence naming the cause and the fix."""


class UserError(Exception):
    """Bad config, unknown method, missing data, ...: the CLI prints the message and exits 2."""
