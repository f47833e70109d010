# Mounted at /metrics by config/urls.py, where Prometheus looks by default.
from django.urls import path

from api.metrics import metrics

urlpatterns = [path("", metrics, name="metrics")]
