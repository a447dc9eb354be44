import datetime as dt

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from governance.services import api_token_issue


class Command(BaseCommand):
    help = "Print a new API token for a user (shown once; stored as a hash)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--expires-in-days", type=int, default=None)
        parser.add_argument("--name", default="cli")

    def handle(self, *args, username, expires_in_days, name, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        expires_at = None
        if expires_in_days is not None:
            if not 1 <= expires_in_days <= 3650:
                raise CommandError("--expires-in-days must be between 1 and 3650")
            expires_at = timezone.now() + dt.timedelta(days=expires_in_days)
        try:
            _, secret = api_token_issue(user=user, name=name, expires_at=expires_at)
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(secret)
