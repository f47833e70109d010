# The dashboard's routes; filled in by the dashboard work (issue 3).
urlpatterns: list = []
