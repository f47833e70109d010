"""A person's own dashboard settings: the time zone every time is shown in."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from runs.forms import TimeZoneForm
from runs.models import ViewerPreference
from runs.viewer_zone import COOKIE, remember_choice
from runs.views.common import AuthenticatedHttpRequest, login_required, see_other


@require_http_methods(["GET", "POST"])
@login_required
def preferences(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = TimeZoneForm(request.POST)
        if form.is_valid():
            zone = form.cleaned_data["time_zone"]
            ViewerPreference.objects.update_or_create(user=request.user, defaults={"time_zone": zone})
            remember_choice(request, zone)
            messages.success(request, f"Times are shown in {zone or 'the time zone of your browser'}.")
            return see_other(reverse("preferences"))
    else:
        form = TimeZoneForm(initial={"time_zone": ViewerPreference.time_zone_of(request.user)})
    return render(
        request, "runs/preferences.html", {"form": form, "browser_zone": request.COOKIES.get(COOKIE, "")}
    )
