import time

from django.core.management.base import BaseCommand

from audit.verify import verify


class Command(BaseCommand):
    help = "Check the audit hash chains and the latest checkpoint. Exit 0 when intact, 1 otherwise."

    def handle(self, *args, **options):
        started = time.perf_counter()
        result = verify()
        elapsed = time.perf_counter() - started
        rate = result.events_checked / elapsed if elapsed else 0
        self.stdout.write(f"checked {result.events_checked} events in {result.chains} chains in {elapsed:.2f} s ({rate:,.0f}/s)")
        if result.ok:
            self.stdout.write(self.style.SUCCESS("audit log intact"))
            return
        self.stderr.write(f"first broken link: {result.first_break['problem']}")
        if len(result.problems) > 1:
            self.stderr.write(f"({len(result.problems) - 1} more problems)")
        raise SystemExit(1)
