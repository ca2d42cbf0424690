"""Names under which Python objects (groups, tap functions) cross the boundary of the package's ``torch.library``
ops, whose arguments are tensors, numbers and strings.

Every object registers itself when it is built (the built-ins at import) and when a copy of it is unpickled, never
during a call: ``torch.compile`` applies a traced call's writes to Python state only after the compiled graph has
run, so an object first registered inside a trace would not yet be there when its op looks it up.
"""

from __future__ import annotations

_KEY_ATTR = "_gconv_triton_op_key"


class OpRegistry:
    """``key -> object`` for one kind of object (``what``, for messages); keys are the objects' ``name``, made
    unique with a ``#n`` suffix.  Registered objects live as long as the process (as a module-level def does)."""

    def __init__(self, what: str):
        self.what = what
        self._objects: dict = {}

    def register(self, obj) -> str:
        """Register ``obj`` under a new key and return it."""
        key = obj.name if obj.name not in self._objects else f"{obj.name}#{len(self._objects)}"
        self._objects[key] = obj
        setattr(obj, _KEY_ATTR, key)
        return key

    def key(self, obj) -> str:
        """The key of ``obj``; an object that was not registered (built around :meth:`register`) is registered
        now, which a compiled first call cannot see (see the module docstring)."""
        key = getattr(obj, _KEY_ATTR, None)
        if key is not None and self._objects.get(key) is obj:
            return key
        return self.register(obj)

    def __getitem__(self, key: str):
        try:
            return self._objects[key]
        except KeyError:
            raise KeyError(f"no {self.what} is registered under {key!r}; registered: {sorted(self._objects)}") \
                from None

    def __contains__(self, key: str) -> bool:
        return key in self._objects


GROUPS = OpRegistry("group")
TAP_FUNCTIONS = OpRegistry("tap function")
