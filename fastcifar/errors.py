"""The one exception users see as a sentence, not a traceback."""


class FastcifarError(Exception):
    """A problem the user can fix. The message is one sentence naming the problem and the fix.

    `fastcifar` (the CLI) prints it without a traceback and exits with status 2.
    """
