import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from agents.demo import FLEET, demo_fleet_ensure
from governance.services import DEMO_USERS, demo_users_ensure


class Command(BaseCommand):
    help = "Create the demo users (admin, finance, security, viewer) and the demo agent fleet. Safe to run twice."

    def handle(self, *args, **options):
        password = settings.WARDEN_DEMO_PASSWORD
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        created = demo_users_ensure(password=password)
        self.stdout.write(f"Demo users ({len(created)} new):")
        for username, group in DEMO_USERS.items():
            self.stdout.write(f"  {username:<9} group {group:<9} password {password}")
        if generated:
            self.stdout.write("  (password generated; set WARDEN_DEMO_PASSWORD to choose it)")
        fleet = demo_fleet_ensure(owner_username="admin")
        total = len(FLEET) + (1 if settings.WARDEN_DEMO_MCP_URL else 0)  # crm-assistant, with the demo's CRM
        self.stdout.write(f"Demo fleet: {total} agents ({len(fleet)} new).")
