from django.shortcuts import render

from governance.access import require


@require("audit.view")
def timeline(request):
    return render(request, "audit/timeline.html")
