"""Domain errors raised by services; views and the API turn them into answers.

- django.core.exceptions.ValidationError: bad input (form error / 400 problem)
- Conflict: a valid request that the current state forbids (409 problem)
- NotAllowed: this person may not do this to this object, and is told why (403 problem)
"""


class Conflict(Exception):
    def __init__(self, message: str, *, code: str = "conflict"):
        super().__init__(message)
        self.message = message
        self.code = code


class NotAllowed(Exception):
    def __init__(self, message: str, *, code: str = "not_allowed"):
        super().__init__(message)
        self.message = message
        self.code = code
