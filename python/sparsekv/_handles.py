"""The base of every native handle."""


class _Closable:
    """A native handle: ``close()`` releases it; also a context manager, and closed when collected."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
