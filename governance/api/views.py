from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.access import capabilities_of, user_groups


class MeOutput(serializers.Serializer):
    username = serializers.CharField()
    groups = serializers.ListField(child=serializers.CharField())
    capabilities = serializers.ListField(child=serializers.CharField())


class MeView(APIView):
    """Who the caller is and what its groups allow: the API twin of the navigation."""

    @extend_schema(responses=MeOutput)
    def get(self, request):
        user = request.user
        data = {
            "username": user.get_username(),
            "groups": sorted(user_groups(user)),
            "capabilities": sorted(capabilities_of(user)),
        }
        return Response(MeOutput(data).data)
