"""Signing in: sessions end with the browser unless the user asks to stay signed in.

SESSION_EXPIRE_AT_BROWSER_CLOSE and SESSION_COOKIE_AGE (12 h) hold for every session;
ticking "stay signed in" gives this one a cookie that outlives the browser, for
DURABLE_REMEMBER_SECONDS (14 days).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm


class LoginForm(AuthenticationForm):
    remember = forms.BooleanField(required=False, label="Stay signed in on this browser")


class LoginView(auth_views.LoginView):
    form_class = LoginForm

    def form_valid(self, form):
        response = super().form_valid(form)  # signs in: the session is the new user's now
        if form.cleaned_data.get("remember"):
            self.request.session.set_expiry(settings.DURABLE_REMEMBER_SECONDS)
        else:
            self.request.session.set_expiry(0)  # until the browser closes (and 12 h at most)
        return response
