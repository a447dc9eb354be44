"""Pages for the MCP servers behind the gateway: everyone reads, admins register (agents/gateway/registry.py)."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from governance.access import can, require
from governance.forms import apply_errors

from . import registry
from .forms import McpServerEditForm, McpServerForm, McpToolForm


def _manage(request):
    if not can(request.user, "mcp.manage"):
        raise PermissionDenied("mcp.manage")


@require("mcp.view")
def server_list(request):
    form = McpServerForm(request.POST or None)
    if request.method == "POST":
        _manage(request)
        if form.is_valid():
            try:
                server = registry.mcp_server_register(by=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"MCP server {server.name} registered: now register the tools agents may "
                                          "use (Discover asks the server what it offers).")
                return redirect("mcp:detail", name=server.name)
    return render(request, "agents/mcp_server_list.html", {
        "servers": registry.mcp_server_list(), "form": form, "can_manage": can(request.user, "mcp.manage"),
    }, status=400 if form.errors else 200)


def _detail(request, server, *, edit=None, tool_form=None, discovered=None, status=200):
    edit = edit or McpServerEditForm(initial={"url": server.url, "description": server.description,
                                              "timeout_seconds": server.timeout_seconds, "active": server.active})
    tools = registry.tool_views(server)
    registered = {view.tool.name for view in tools}
    return render(request, "agents/mcp_server_detail.html", {
        "server": server, "tools": tools, "edit": edit, "tool_form": tool_form or McpToolForm(),
        "can_manage": can(request.user, "mcp.manage"), "calls": registry.recent_calls(server),
        "discovered": [dict(tool, registered=tool["name"] in registered,
                            schema=json.dumps(tool["input_schema"], indent=1)) for tool in discovered or []],
        "gateway_url": request.build_absolute_uri(f"/mcp/{server.name}/"),
    }, status=status)


@require("mcp.view")
def server_detail(request, name):
    server = registry.mcp_server_get(name=name)
    if request.method != "POST":
        # ?tool=<name>: the tool form filled with that tool as registered, to change it
        tool = server.tools.filter(name=request.GET.get("tool", "")).first() if can(request.user, "mcp.manage") else None
        if tool is None:
            return _detail(request, server)
        view, = registry.tool_views(server, [tool])
        return _detail(request, server, tool_form=McpToolForm(initial={
            "name": tool.name, "description": tool.description, "input_schema": json.dumps(tool.input_schema, indent=1),
            "clearance": view.clearance, "returns": tool.returns, "active": tool.active}))
    _manage(request)
    edit = McpServerEditForm(request.POST)
    if edit.is_valid():
        data = {k: v for k, v in edit.cleaned_data.items() if k != "name"}
        try:
            registry.mcp_server_update(server=server, by=request.user, **data)
        except ValidationError as error:
            apply_errors(edit, error)
        else:
            messages.success(request, f"MCP server {server.name} saved.")
            return redirect("mcp:detail", name=server.name)
    return _detail(request, server, edit=edit, status=400)


@require("mcp.manage")
@require_POST
def tool_set(request, name):
    server = registry.mcp_server_get(name=name)
    form = McpToolForm(request.POST)
    if form.is_valid():
        try:
            tool = registry.mcp_tool_set(server=server, by=request.user, **form.service_arguments())
        except ValidationError as error:
            if hasattr(error, "error_dict") and "price_micros" in error.error_dict:  # the form's field is "price"
                error.error_dict["price"] = error.error_dict.pop("price_micros")
            apply_errors(form, error)
        else:
            messages.success(request, f"Tool {tool.resource} saved. Agents reach it once it is in their allowed "
                                      "tools and their roles grant tool.call.")
            if registry.tool_views(server, [tool])[0].price_micros is None:
                messages.warning(request, f"{tool.resource} has no price: the gate denies every call of it until it "
                                          "has one.")
            return redirect("mcp:detail", name=server.name)
    return _detail(request, server, tool_form=form, status=400)


@require("mcp.manage")
@require_POST
def discover(request, name):
    server = registry.mcp_server_get(name=name)
    try:
        found = registry.discover_tools(server)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return _detail(request, server, status=502)
    if not found:
        messages.info(request, f"{server.name} offers no tools.")
    return _detail(request, server, discovered=found)
