from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from governance.database import database_secure
from governance.settings import database_from_url


class Command(BaseCommand):
    help = ("Run as the database owner after `migrate`: create or update the application role named by "
            "WARDEN_APP_DATABASE_URL (web, workers and beat connect as it), grant it what Warden needs and no more "
            "(audit tables append-only), and store the archive key and retention floor for the owner's checks.")

    def add_arguments(self, parser):
        parser.add_argument("--app-url", default=None,
                            help="postgres:// URL of the application role (default WARDEN_APP_DATABASE_URL)")

    def handle(self, *args, app_url=None, **options):
        app_url = app_url if app_url is not None else settings.WARDEN_APP_DATABASE_URL
        user = password = None
        if app_url:
            try:
                app = database_from_url(app_url)
            except ImproperlyConfigured as error:
                raise CommandError(str(error)) from None
            user, password = app["USER"] or None, app["PASSWORD"] or None
        try:
            for line in database_secure(app_user=user, app_password=password):
                self.stdout.write(line)
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
