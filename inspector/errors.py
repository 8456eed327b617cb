"""Every error the worker raises on purpose, so callers can catch by stage.

    InspectorError
    ├── ConfigError          a config key is missing, unknown or out of range (names the key and the fix)
    ├── SourceError          Redis (or another frame source / event sink) failed
    │   ├── SourceUnavailable    unreachable or busy for now (connection lost, loading, OOM, read-only
    │   │                        replica during a failover): the worker retries with backoff, counted and logged
    │   └── SourceRefused        refused for good (wrong password, missing permission, a key of the wrong
    │                            type): retrying cannot help, the worker stops with the fix in one line
    ├── DecodeError          one frame's payload is malformed; the frame is rejected, the worker goes on
    ├── EngineError          an engine folder, manifest or backend cannot be loaded or run
    │   └── EngineMismatchError  the engine was built for another TensorRT version or GPU
    └── WorkerFailed         the running worker met an error it cannot go on from (a restart may help)
"""


class InspectorError(Exception):
    """Base of every error raised on purpose by inspector and trainer."""


class ConfigError(InspectorError):
    """A configuration value is wrong; the message names the key and how to fix it."""


class SourceError(InspectorError):
    """The frame source or event sink failed."""


class SourceUnavailable(SourceError):
    """The source cannot answer now; the same call may succeed later."""


class SourceRefused(SourceError):
    """The source refused in a way no retry can fix; the message says what to change."""


class DecodeError(InspectorError):
    """A frame payload cannot become a uint8 image; the frame is rejected, not retried."""


class EngineError(InspectorError):
    """An engine cannot be loaded or run."""


class EngineMismatchError(EngineError):
    """The engine was built for another TensorRT version or GPU: rebuild it with `trainer build-engine`."""


class WorkerFailed(InspectorError):
    """Raised by `inspector run` when a worker thread failed after start-up; systemd restarts the worker."""


# What an exception means when it was raised without a message (msgpack raises FormatError, StackError and
# OutOfData with an empty str()); keyed by class name, so this module imports nothing.
_MEANINGS = {
    "FormatError": "invalid msgpack type byte (not msgpack data)",
    "StackError": "nesting too deep",
    "OutOfData": "truncated data",
    "BufferFull": "data larger than the read buffer",
    "ExtraData": "trailing bytes after the value",
    "RecursionError": "nesting too deep",
    "MemoryError": "too large to hold in memory",
}


def describe(exc: BaseException, limit: int = 160) -> str:
    """`Class: what went wrong` for a rejection text, never with an empty detail: an exception whose str() is
    empty (or blank) is described by its class's meaning, else by its docstring, else as raised without a message."""
    text = " ".join(str(exc).split())[:limit]
    if not text:
        cls = type(exc)
        doc = (cls.__doc__ or "").strip().splitlines()
        text = _MEANINGS.get(cls.__name__) or (doc[0].rstrip(".") if doc else "raised without a message")
    return f"{type(exc).__name__}: {text}"
