from django.urls import path

from notifications import views

urlpatterns = [
    path("", views.notification_list, name="notification_list"),
    path("<int:rule_id>/test/", views.notification_test, name="notification_test"),
]
