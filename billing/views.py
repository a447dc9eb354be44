from django.shortcuts import render

from governance.access import require


@require("budget.view")
def budget_list(request):
    return render(request, "billing/budget_list.html")
