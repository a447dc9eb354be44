"""What every API view module shares: the capability-checked view, input validation, CSV streaming."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from .permissions import HasCapability


class CapabilityView(APIView):
    """`capabilities = {"GET": "agent.view", ...}`: one funnel for every endpoint."""

    permission_classes = [IsAuthenticated, HasCapability]
    capabilities: dict[str, str] = {}


def valid(serializer_class, data) -> dict:
    """Validated input, or a ValidationError that becomes a 400 problem."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class _Echo:
    def write(self, value):
        return value


def csv_lines(header: list[str], rows: Iterable) -> Iterator[str]:
    """CSV text line by line, for a StreamingHttpResponse of any size."""
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow(row)
