from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("", views.budget_list, name="budgets"),
    path("<int:budget_id>/edit/", views.budget_edit, name="budget-edit"),
    path("spend/", views.spend, name="spend"),
    path("prices/", views.price_list, name="prices"),
]
