"""Errors that are the user's to fix (a config key, a data file), as opposed to bugs.

Their message names the key or `file:line`, what is wrong and what to do, so the command line prints
just the message; the traceback still goes to train.log. Standard library only.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the configuration or the data; the message says where and what to do."""


class ConfigError(UserError):
    """The composed config breaks a rule; the message lists every broken rule with its key."""
