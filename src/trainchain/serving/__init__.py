"""Serving the registry's champion over HTTP (``trainchain serve``).

- :mod:`~trainchain.serving.config`: the frozen :class:`ServeConfig`;
- :mod:`~trainchain.serving.models`: the live champion, reloaded when its alias moves;
- :mod:`~trainchain.serving.batching`: concurrent image requests in one model call;
- :mod:`~trainchain.serving.inputs`: request bodies to model inputs, or 4xx errors;
- :mod:`~trainchain.serving.app`: ``create_app(config)``, the Flask app;
- :mod:`~trainchain.serving.drain`: the unread rest of a body read before the answer;
- :mod:`~trainchain.serving.drift`: the champion's inputs against its drift reference;
- :mod:`~trainchain.serving.metrics`, :mod:`~trainchain.serving.openapi`;
- :mod:`~trainchain.serving.server`: the app under gunicorn, N worker processes.

Importing this package loads nothing and connects to nothing.
"""

from trainchain.serving.config import ServeConfig

__all__ = ["ServeConfig"]
