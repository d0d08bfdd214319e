"""Go's ``context`` for Python: cancellation, deadlines and request values, across threads,
asyncio, trio, HTTP hops and Ray tasks.

Example:
    >>> import gocontext
    >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 2.0)
    >>> ctx.err() is None
    True
    >>> cancel()
    >>> ctx.err()
    Canceled('context canceled')
"""

from contextlib import suppress as _suppress

from ._ambient import current as current
from ._ambient import use as use
from ._async import FrameworkCancelled as FrameworkCancelled
from ._async import scope as scope
from ._async import sleep as sleep
from ._context import Context as Context
from ._context import Key as Key
from ._context import RichContext as RichContext
from ._context import after_func as after_func
from ._context import background as background
from ._context import cause as cause
from ._context import merge as merge
from ._context import todo as todo
from ._context import with_cancel as with_cancel
from ._context import with_cancel_cause as with_cancel_cause
from ._context import with_deadline as with_deadline
from ._context import with_deadline_cause as with_deadline_cause
from ._context import with_timeout as with_timeout
from ._context import with_timeout_cause as with_timeout_cause
from ._context import with_value as with_value
from ._context import without_cancel as without_cancel
from ._done import Done as Done
from ._errors import Canceled as Canceled
from ._errors import Cancelled as Cancelled
from ._errors import ContextError as ContextError
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._executor import ContextExecutor as ContextExecutor
from ._group import Group as Group
from ._group import TaskGroup as TaskGroup
from ._propagation import PropagatedKey as PropagatedKey
from ._signal import SignalReceived as SignalReceived
from ._signal import signal_context as signal_context
from ._to_thread import to_thread as to_thread

__all__ = [
    "Canceled",
    "Cancelled",
    "Context",
    "ContextError",
    "ContextExecutor",
    "DeadlineExceeded",
    "Done",
    "FrameworkCancelled",
    "Group",
    "Key",
    "PropagatedKey",
    "RichContext",
    "SignalReceived",
    "TaskGroup",
    "after_func",
    "background",
    "cause",
    "current",
    "merge",
    "scope",
    "signal_context",
    "sleep",
    "to_thread",
    "todo",
    "use",
    "with_cancel",
    "with_cancel_cause",
    "with_deadline",
    "with_deadline_cause",
    "with_timeout",
    "with_timeout_cause",
    "with_value",
    "without_cancel",
]

__version__ = "0.1.0"

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("gocontext."):
        with _suppress(AttributeError, TypeError):  # some types refuse; they keep their own
            _obj.__module__ = "gocontext"
del _name, _obj, _suppress
