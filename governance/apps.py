from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance"

    def ready(self) -> None:
        from . import telemetry
        from .api import schema  # noqa: F401  (registers the bearer scheme)

        telemetry.configure()
