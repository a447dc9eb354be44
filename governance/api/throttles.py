"""Abuse limits on the API: bad credentials and anonymous calls, counted per client address in Redis.

DRF's throttles run after authentication and permissions, so a request with
a wrong key (401) or none (401/403) would never reach them. These two are
consulted from inside authentication instead (governance.api.authentication):

- `BadCredentials`: every bearer credential that does not resolve counts;
  past the rate, the address gets 429 for any bearer credential, before any
  lookup, until the window has passed.
- `Anonymous`: a request that authenticates as nobody counts; past the rate, 429.

Both keep their counts in the Django cache (Redis). If Redis cannot be
reached the request is refused with 503: faults fail closed.
"""

from __future__ import annotations

import logging

from rest_framework import exceptions, throttling

logger = logging.getLogger(__name__)


class LimitsUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "Rate limits cannot be checked right now (Redis is unreachable); try again shortly."
    default_code = "limits_unavailable"


class _Counted(throttling.SimpleRateThrottle):
    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _history(self, request) -> list:
        self.key = self.get_cache_key(request)
        self.now = self.timer()
        try:
            history = self.cache.get(self.key, [])
        except Exception as error:  # redis-py raises its own ConnectionError / TimeoutError
            logger.warning("rate limit store unreachable: %s", error)
            raise LimitsUnavailable() from None
        self.history = [moment for moment in history if moment > self.now - self.duration]
        return self.history

    def exceeded(self, request) -> bool:
        """Is this address over the rate already? (Counts nothing.)"""
        return len(self._history(request)) >= self.num_requests

    def count(self, request) -> bool:
        """Count one more; False when that puts the address over the rate."""
        history = self._history(request)
        history.insert(0, self.now)
        try:
            self.cache.set(self.key, history, self.duration)
        except Exception as error:
            logger.warning("rate limit store unreachable: %s", error)
            raise LimitsUnavailable() from None
        return len(history) <= self.num_requests

    def refuse(self):
        return exceptions.Throttled(wait=self.wait())


class BadCredentials(_Counted):
    scope = "bad_credentials"


class Anonymous(_Counted):
    scope = "anon"
