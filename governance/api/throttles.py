"""Abuse limits on the API: bad credentials and anonymous calls, counted per client address in Redis.

DRF's throttles run after authentication and permissions, so a request with
a wrong key (401) or none (401/403) would never reach them. These two are
consulted from inside authentication instead (governance.api.authentication):

- `BadCredentials`: every bearer credential that does not resolve counts;
  past the rate, such requests from that address get 429 instead of 401
  until the window ends. A credential that checks out is never refused
  (another client behind the same address keeps working) and touches no counter.
- `Anonymous`: a request that authenticates as nobody counts; past the rate, 429.

Counters are fixed windows incremented atomically in Redis (the Django
cache). If Redis cannot be reached, a request that would be counted is
refused with 503: faults fail closed.
"""

from __future__ import annotations

import logging

from rest_framework import exceptions, throttling

from governance.middleware import client_address

logger = logging.getLogger(__name__)


class LimitsUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "Rate limits cannot be checked right now (Redis is unreachable); try again shortly."
    default_code = "limits_unavailable"


class _Counted(throttling.SimpleRateThrottle):
    """The rate of a DRF throttle (`DEFAULT_THROTTLE_RATES[scope]`), counted in fixed windows."""

    def get_ident(self, request):
        return client_address(request)

    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def count(self, request) -> bool:
        """Count one more for this address; False when that is past the rate."""
        now = self.timer()
        window = int(now // self.duration)
        key = f"{self.get_cache_key(request)}_{window}"
        self.retry_after = max(1, int((window + 1) * self.duration - now) + 1)
        try:
            self.cache.add(key, 0, timeout=self.duration + 1)
            hits = self.cache.incr(key)
        except ValueError:  # expired between add and incr: a new window
            hits = 1
        except Exception as error:  # redis-py raises its own ConnectionError / TimeoutError
            logger.warning("rate limit store unreachable: %s", error)
            raise LimitsUnavailable() from None
        return hits <= self.num_requests

    def refuse(self):
        return exceptions.Throttled(wait=self.retry_after)


class BadCredentials(_Counted):
    scope = "bad_credentials"


class Anonymous(_Counted):
    scope = "anon"
