from django.urls import path

from . import views

urlpatterns = [
    path("budgets/", views.BudgetListView.as_view(), name="api-budgets"),
    path("budgets/<int:budget_id>/", views.BudgetDetailView.as_view(), name="api-budget"),
    path("prices/", views.PriceListView.as_view(), name="api-prices"),
    path("spend/", views.SpendView.as_view(), name="api-spend"),
    path("spend/export/", views.SpendExportView.as_view(), name="api-spend-export"),
    path("notifications/", views.NotificationListView.as_view(), name="api-notifications"),
]
