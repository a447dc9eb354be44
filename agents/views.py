from django.shortcuts import render

from governance.access import require


@require("agent.view")
def agent_list(request):
    return render(request, "agents/agent_list.html")
