"""Flask's JSON through orjson: responses (and ``request.get_json``) without the
standard library's per-value Python calls. Anything orjson does not serialise (or
refuses to parse) goes through Flask's own provider, so the answers are the same."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    """Compact JSON in insertion order (``sort_keys`` is False), as Flask would write it."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # indent, sort_keys, ...: what orjson does not do
            return super().dumps(obj, **kwargs)
        try:
            return orjson.dumps(obj, option=_OPTIONS).decode()
        except TypeError:
            return super().dumps(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            return super().loads(s, **kwargs)
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return super().loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(f"{self.dumps(obj)}\n", mimetype=self.mimetype)
