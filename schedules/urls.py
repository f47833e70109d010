from django.urls import path

from schedules import views

urlpatterns = [
    path("", views.schedule_list, name="schedule_list"),
    path("<int:schedule_id>/", views.schedule_detail, name="schedule_detail"),
    path("<int:schedule_id>/pause/", views.schedule_pause, name="schedule_pause"),
    path("<int:schedule_id>/resume/", views.schedule_resume, name="schedule_resume"),
    path("<int:schedule_id>/trigger/", views.schedule_trigger, name="schedule_trigger"),
]
