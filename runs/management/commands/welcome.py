"""Printed by `make run`: where the dashboard is and how to log in."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Make sure someone can log in, and say where the dashboard is."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args, url: str, **options) -> None:
        User = get_user_model()
        if not User.objects.exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "", password)
            login = (
                f"user 'admin', password '{password}' (shown once; change it with manage.py changepassword)"
            )
        else:
            login = "an existing account (add one with: .venv/bin/python manage.py createsuperuser)"
        self.stdout.write(self.style.SUCCESS(f"\n  Dashboard: {url}\n  Log in with {login}\n"))
