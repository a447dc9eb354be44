from django.urls import path

from . import views

app_name = "mcp"

urlpatterns = [
    path("", views.server_list, name="servers"),
    path("<str:name>/", views.server_detail, name="detail"),
    path("<str:name>/tools/", views.tool_set, name="tool-set"),
    path("<str:name>/discover/", views.discover, name="discover"),
]
