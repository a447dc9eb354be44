import os
import time

from django.core.management.base import BaseCommand

from audit.verify import verify


class Command(BaseCommand):
    help = "Check the audit hash chains, archive manifests and the latest checkpoint. Exit 0 when intact, 1 otherwise."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                            help="processes checking chains in parallel (one snapshot); default: up to 4 cores")
        parser.add_argument("--archives", action="store_true", help="also read and check every archive file")

    def handle(self, *args, workers=1, archives=False, **options):
        started = time.perf_counter()
        result = verify(workers=max(1, workers), archives=archives)
        elapsed = time.perf_counter() - started
        rate = result.events_checked / elapsed if elapsed else 0
        self.stdout.write(f"checked {result.events_checked} events in {result.chains} chains in {elapsed:.2f} s "
                          f"({rate:,.0f}/s); {result.archived_events} archived events in the manifests"
                          + (" (files checked)" if archives else ""))
        if result.ok:
            self.stdout.write(self.style.SUCCESS("audit log intact"))
            return
        self.stderr.write(f"first broken link: {result.first_break['problem']}")
        if len(result.problems) > 1:
            self.stderr.write(f"({len(result.problems) - 1} more problems)")
        raise SystemExit(1)
