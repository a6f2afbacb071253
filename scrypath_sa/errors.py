"""The one error hierarchy of scrypath_sa.

::

    ScrypathError
    ├── ConfigurationError        a model option, a configure() argument or a mode name is wrong
    │   └── MissingExtraError     an optional dependency is not installed; names the extra
    ├── NotConfiguredError        an operation needs configure() first
    ├── BackendError              the search backend refused or could not be reached
    │   └── IndexContractError    the alias/index layout is not what the library expects
    ├── SyncIncompleteError       strict mode: the data DID commit, its sync work did not finish
    └── EventError                an operator call named an event it cannot act on

Every message says what to fix. No message carries a secret: text that comes from a
driver or a server passes through :func:`scrypath_sa.redaction.redact` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrypath_sa.outcome import Outcome


class ScrypathError(Exception):
    """Base class of every error raised by scrypath_sa."""


class ConfigurationError(ScrypathError):
    """A model option, a ``configure()`` argument or a mode name is wrong."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module!r} is not installed: install it with `pip install 'scrypath-sa[{extra}]'`"
        )
        self.extra = extra


class NotConfiguredError(ScrypathError):
    """An operation needs ``scrypath_sa.configure(...)`` to have been called."""


class BackendError(ScrypathError):
    """The search backend refused a request or could not be reached."""


class IndexContractError(BackendError):
    """The alias or physical index is not laid out as the model's contract says."""


class SyncIncompleteError(ScrypathError):
    """Raised after commit in strict mode. The data DID commit; its sync work did not finish.

    ``outcome`` says which events are in which state; the events stay in ``sync_events``
    and are retried or reported by the operator API.
    """

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        super().__init__(
            "the database transaction committed, but its search sync did not complete: "
            f"{outcome.describe()}. Nothing is lost: the events are recorded in sync_events "
            "and `scrypath-sa sweep` (or scrypath_sa.sweep()) will retry them."
        )


class EventError(ScrypathError):
    """An operator call named an event that does not exist or cannot be acted on."""
