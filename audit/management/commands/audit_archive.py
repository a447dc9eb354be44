from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.archive import ArchiveRefused, archive_plan, audit_archive


class Command(BaseCommand):
    help = ("Move audit events older than the retention (WARDEN_AUDIT_RETENTION_DAYS) to a compressed JSON Lines "
            "file in WARDEN_AUDIT_ARCHIVE_DIR, chains intact; `audit_verify --archives` checks the files.")

    def add_arguments(self, parser):
        parser.add_argument("--retention-days", type=int, help=f"default {settings.WARDEN_AUDIT_RETENTION_DAYS}")
        parser.add_argument("--dry-run", action="store_true", help="only say what would be archived")

    def handle(self, *args, retention_days=None, dry_run=False, **options):
        plan = archive_plan(retention_days=retention_days)
        if plan is None:
            self.stdout.write("retention is off (0 days or fewer): events are kept in the table")
            return
        self.stdout.write(f"{plan.events} events in {len(plan.ranges)} chains are older than {plan.cutoff:%Y-%m-%d %H:%M} UTC")
        if dry_run or not plan.events:
            return
        try:
            segment = audit_archive(retention_days=retention_days)
        except ArchiveRefused as refused:
            raise CommandError(str(refused)) from None
        if segment is None:
            self.stdout.write("nothing archived (another archive run holds the lock)")
            return
        path = settings.WARDEN_AUDIT_ARCHIVE_DIR / segment.file_name
        self.stdout.write(self.style.SUCCESS(f"archived {segment.events} events to {path} (sha256 {segment.sha256})"))
