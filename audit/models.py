from __future__ import annotations

from django.conf import settings
from django.db import models

GENESIS = "0" * 64


class ChainHead(models.Model):
    """The newest link of one hash chain ("agent:<uuid>" or "global").

    Appending locks only this row, so agents do not serialise each other.
    """

    chain = models.CharField(max_length=64, primary_key=True)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)


class AuditEvent(models.Model):
    """An append-only record. Names are kept as text; nothing cascades here."""

    chain = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    occurred_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16)  # agent | user | system
    actor_id = models.CharField(max_length=64, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    agent_id = models.UUIDField(null=True, blank=True)
    agent_name = models.CharField(max_length=64, blank=True)
    team = models.CharField(max_length=64, blank=True)
    delegation_chain = models.JSONField(default=list, blank=True)
    action = models.CharField(max_length=64)
    resource = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=32, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    policy_ids = models.JSONField(default=list, blank=True)
    policy_version = models.IntegerField(null=True, blank=True)
    cost_micros = models.BigIntegerField(null=True, blank=True)
    data_classification = models.CharField(max_length=32, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        indexes = [
            models.Index(fields=["-occurred_at", "-id"], name="audit_time_idx"),
            models.Index(fields=["correlation_id"], name="audit_correlation_idx"),
            # One per timeline filter, in the page's order, so a filtered page of 50
            # reads 51 index entries however many millions of events there are.
            # (An agent's own events are its chain: the (chain, seq) index serves them.)
            models.Index(fields=["action", "-occurred_at", "-id"], name="audit_action_time_idx"),
            models.Index(fields=["agent_name", "-occurred_at", "-id"], name="audit_agent_name_time_idx"),
            models.Index(fields=["team", "-occurred_at", "-id"], name="audit_team_time_idx"),
            models.Index(fields=["actor_name", "-occurred_at", "-id"], name="audit_actor_time_idx"),
            models.Index(fields=["outcome", "-occurred_at", "-id"], name="audit_outcome_time_idx"),
        ]


class Checkpoint(models.Model):
    """A signed snapshot of every chain head, so cutting a chain's tail is detectable.

    Written at least every minute by beat; append-only like the events.
    """

    created_at = models.DateTimeField()
    heads = models.JSONField()  # {chain: [seq, hash]}
    events = models.BigIntegerField()  # total events covered
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["-created_at"]


class ArchiveSegment(models.Model):
    """Events moved out of the table into one compressed JSON Lines file.

    `chains` records, per chain, the range archived and the hashes at both ends,
    so the events left in the table still link to the archived ones and the file
    can be checked on its own. Signed, and append-only like the events: the
    database lets an event be deleted only while a segment covering it is named
    in the deleting transaction (migration 0004).
    """

    created_at = models.DateTimeField()
    cutoff = models.DateTimeField()  # every archived event is older than this
    file_name = models.CharField(max_length=255, unique=True)  # in WARDEN_AUDIT_ARCHIVE_DIR
    sha256 = models.CharField(max_length=64)  # of the compressed file
    events = models.BigIntegerField()
    chains = models.JSONField()  # {chain: [first_seq, last_seq, prev_hash of first, hash of last]}
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["created_at"]


class AuditExport(models.Model):
    """One export of the timeline under a filter, written by a worker with its progress.

    The file lives in WARDEN_EXPORT_DIR until it expires (WARDEN_EXPORT_TTL_HOURS);
    only the person who asked for it can download it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, editable=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="audit_exports")
    created_at = models.DateTimeField()
    format = models.CharField(max_length=8)  # csv | jsonl
    filters = models.JSONField(default=dict)  # the timeline query it was started from
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.BigIntegerField(null=True)  # counted when the work starts
    written = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    finished_at = models.DateTimeField(null=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        if not self.total:
            return 0
        return min(99, self.written * 100 // self.total)

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED, self.Status.EXPIRED)
